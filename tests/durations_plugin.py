"""Measured test durations: `--store-durations` (or `ICTHP_STORE_DURATIONS=1`) merges them into `tests/durations.json`.

Each test id maps to the seconds of its set-up + call + tear-down in the latest run that ran it; ids this run did not
run keep their stored value, so a subset run refreshes only its own tests. `tests/test_durations.py` reads the file
and fails when a stored test over the fast tier's budget lacks the `slow` marker.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

#: where the measured durations live (committed; refresh with the command in docs/testing.md)
DURATIONS_FILE = Path(__file__).with_name("durations.json")
#: the fast tier's budget for one test (set-up + call + tear-down), in seconds on a quiet 2-core machine
FAST_TEST_BUDGET_S = 10.0
_ENV = "ICTHP_STORE_DURATIONS"


def load_durations(path: Path = DURATIONS_FILE) -> dict[str, float]:
    """The stored `test id -> seconds` map ({} when the file does not exist yet)."""
    if not path.exists():
        return {}
    return {str(k): float(v) for k, v in json.loads(path.read_text())["durations"].items()}


def over_budget_without_slow(durations: dict[str, float], items, budget: float = FAST_TEST_BUDGET_S) -> list[str]:
    """`id (seconds)` of the collected `items` whose stored duration exceeds `budget` and that lack `slow`."""
    return [
        f"{item.nodeid} ({durations[item.nodeid]:.1f} s)"
        for item in items
        if durations.get(item.nodeid, 0.0) > budget and item.get_closest_marker("slow") is None
    ]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store-durations",
        action="store_true",
        default=False,
        help=f"merge each test's set-up+call+tear-down seconds into {DURATIONS_FILE.name} (also: {_ENV}=1)",
    )


def _enabled(config: pytest.Config) -> bool:
    wanted = config.getoption("--store-durations") or os.environ.get(_ENV, "") not in ("", "0")
    return bool(wanted) and not hasattr(config, "workerinput")  # under xdist only the controller writes


class DurationStore:
    """Sums each test's phase durations during the run and merges them into the file at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.measured: dict[str, float] = {}
        self.load_start = os.getloadavg()[0]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.measured[report.nodeid] = self.measured.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        if not self.measured:
            return
        stored = json.loads(self.path.read_text()) if self.path.exists() else {"durations": {}, "runs": []}
        stored["durations"].update({k: round(v, 3) for k, v in self.measured.items()})
        stored["durations"] = dict(sorted(stored["durations"].items()))
        run = {"date": time.strftime("%Y-%m-%d %H:%M"), "tests": len(self.measured), "cpus": os.cpu_count()}
        run["load_avg_1m"] = [round(self.load_start, 1), round(os.getloadavg()[0], 1)]  # > cpus: a loaded machine
        stored["runs"] = (stored.get("runs", []) + [run])[-20:]
        self.path.write_text(json.dumps(stored, indent=1) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    if _enabled(config):
        config.pluginmanager.register(DurationStore(DURATIONS_FILE), "icthp-durations-store")
