"""Measured test durations: `--store-durations` (or `ICTHP_STORE_DURATIONS=1`) merges them into `tests/durations.json`.

Each test id maps to the seconds of its set-up + call + tear-down in the latest run that ran it (a session fixture's
set-up counts for the first test that uses it); ids this run did not run keep their stored value, so a subset run
refreshes only its own tests. `load_factor` keeps, per id, that run's 1-minute load average per core (at least 1) and
`cpu_s` the CPU seconds the test used (with its subprocesses): on a loaded machine the check uses the wall time divided
by the load factor but no less than the CPU seconds (`quiet_estimate`). Refresh on a quiet machine (factor 1) for
exact numbers. `tests/test_durations.py` fails when a stored test over the fast tier's budget lacks the
`slow` marker.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import pytest

#: where the measured durations live (committed; refresh with the command in docs/testing.md)
DURATIONS_FILE = Path(__file__).with_name("durations.json")
#: the fast tier's budget for one test (set-up + call + tear-down), in seconds on a quiet 2-core machine
FAST_TEST_BUDGET_S = 10.0
_ENV = "ICTHP_STORE_DURATIONS"


def quiet_estimate(wall: float, load_factor: float = 1.0, cpu: float | None = None) -> float:
    """Seconds a test would take on a quiet machine: its wall time when measured on one (factor 1), else the wall time
    divided by the load per core, but no less than the CPU seconds it used (its own and its reaped subprocesses')."""
    if load_factor <= 1.0:
        return wall
    return min(wall, max(wall / load_factor, cpu or 0.0))


def load_durations(path: Path = DURATIONS_FILE) -> dict[str, float]:
    """The stored `test id -> quiet-machine seconds` estimates ({} when there is no file yet)."""
    if not path.exists():
        return {}
    stored = json.loads(path.read_text())
    factor, cpu = stored.get("load_factor", {}), stored.get("cpu_s", {})
    return {
        str(k): quiet_estimate(float(v), float(factor.get(k, 1.0)), cpu.get(k)) for k, v in stored["durations"].items()
    }


def over_budget_without_slow(durations: dict[str, float], items, budget: float = FAST_TEST_BUDGET_S) -> list[str]:
    """`id (seconds)` of the collected `items` whose duration exceeds `budget` and that lack the `slow` marker.

    Ids in `durations` that are not among `items` (no longer collected, or deselected) are ignored.
    """
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
        help=f"merge each test's set-up+call+tear-down seconds into tests/{DURATIONS_FILE.name} (also: {_ENV}=1)",
    )
    parser.addoption("--durations-file", default=str(DURATIONS_FILE), help="where --store-durations writes")


def _target(config: pytest.Config) -> Path | None:
    """The file to write, or None when not storing (under xdist only the controller writes)."""
    if hasattr(config, "workerinput"):
        return None
    if config.getoption("--store-durations") or os.environ.get(_ENV, "") not in ("", "0"):
        return Path(config.getoption("--durations-file"))
    return None


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process and its reaped child processes."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class DurationStore:
    """Sums each test's phase durations during the run and merges them into the file at the end."""

    def __init__(self, path: Path, cpu: bool = True) -> None:
        self.path = path
        self.measured: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.cpu_start: dict[str, float] = {}
        self.track_cpu = cpu  # False under xdist: the tests run in the workers
        self.load_start = os.getloadavg()[0]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.measured[report.nodeid] = self.measured.get(report.nodeid, 0.0) + report.duration

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        if self.track_cpu:
            self.cpu_start[nodeid] = _cpu_seconds()

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        if nodeid in self.cpu_start:
            self.cpu[nodeid] = _cpu_seconds() - self.cpu_start.pop(nodeid)

    def pytest_sessionfinish(self) -> None:
        if not self.measured:
            return
        stored = json.loads(self.path.read_text()) if self.path.exists() else {}
        cpus = os.cpu_count() or 1
        loads = [self.load_start, os.getloadavg()[0]]  # 1-minute load average at start and end; > cpus: loaded
        factor = round(max(1.0, sum(loads) / len(loads) / cpus), 2)
        for key, new in (
            ("durations", {k: round(v, 3) for k, v in self.measured.items()}),
            ("load_factor", dict.fromkeys(self.measured, factor)),
            ("cpu_s", {k: round(v, 3) for k, v in self.cpu.items()}),
        ):
            stored[key] = dict(sorted({**stored.get(key, {}), **new}.items()))
        run = {"date": time.strftime("%Y-%m-%d %H:%M"), "tests": len(self.measured), "cpus": cpus}
        run["load_avg_1m"] = [round(x, 1) for x in loads]
        stored["runs"] = (stored.get("runs", []) + [run])[-20:]
        self.path.write_text(json.dumps(stored, indent=1) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    target = _target(config)
    if target is not None:
        distributed = getattr(config.option, "numprocesses", None) not in (None, 0)
        config.pluginmanager.register(DurationStore(target, cpu=not distributed), "icthp-durations-store")
