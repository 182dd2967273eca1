"""The `slow` marker agrees with the measured durations in tests/durations.json (see docs/testing.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from durations_plugin import FAST_TEST_BUDGET_S, load_durations, over_budget_without_slow, quiet_estimate


def test_stored_tests_over_the_fast_budget_are_marked_slow(request):
    """Every collected test whose stored duration is over the fast tier's per-test budget carries `slow`.

    Checks the tests collected in this session (all of them in a full or `-m "not slow"` run); a test added later
    without markers is caught once the durations are refreshed.
    """
    offenders = over_budget_without_slow(load_durations(), request.session.items)
    assert not offenders, f"over {FAST_TEST_BUDGET_S:.0f} s but not marked slow: " + ", ".join(offenders)


def _item(nodeid: str, *marks: str):
    return types.SimpleNamespace(nodeid=nodeid, get_closest_marker=lambda name: name if name in marks else None)


def test_the_check_flags_only_unmarked_tests_over_budget(tmp_path):
    store = tmp_path / "d.json"
    durations = {"a::slow_unmarked": 40.0, "a::slow_marked": 40.0, "a::fast": 2.0, "a::gone": 99.0, "a::loaded": 50.0}
    store.write_text(json.dumps({"durations": durations, "load_factor": {"a::loaded": 10.0}, "cpu_s": {"a::fast": 9}}))
    got = load_durations(store)
    assert got["a::loaded"] == 5.0 and got["a::fast"] == 2.0  # divided by the run's load per core
    assert quiet_estimate(50.0, 10.0, cpu=30.0) == 30.0 and quiet_estimate(50.0, 1.0, cpu=3.0) == 50.0
    items = [_item("a::slow_unmarked"), _item("a::slow_marked", "slow"), _item("a::fast"), _item("a::loaded")]
    assert over_budget_without_slow(got, items) == ["a::slow_unmarked (40.0 s)"]  # a::gone is not collected
    assert load_durations(tmp_path / "missing.json") == {}


def test_store_durations_merges_the_measured_seconds(tmp_path):
    """`--store-durations --durations-file FILE` in a real run: set-up + call + tear-down per id, other ids kept."""
    (tmp_path / "test_x.py").write_text(
        "import time\nimport pytest\n\n@pytest.fixture\ndef slow_setup():\n    time.sleep(0.3)\n\n"
        "def test_a(slow_setup):\n    pass\n\ndef test_b():\n    pass\n"
    )
    out = tmp_path / "d.json"
    out.write_text(json.dumps({"durations": {"old::kept": 1.5}, "load_factor": {"old::kept": 1.0}}))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "durations_plugin", "-p", "no:cacheprovider"]
    res = subprocess.run(
        [*cmd, "--store-durations", "--durations-file", str(out), "test_x.py"],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    stored = json.loads(out.read_text())
    assert set(stored["durations"]) == {"old::kept", "test_x.py::test_a", "test_x.py::test_b"}
    assert stored["durations"]["test_x.py::test_a"] >= 0.3 > stored["durations"]["test_x.py::test_b"]
    assert stored["durations"]["old::kept"] == 1.5 and stored["load_factor"]["test_x.py::test_a"] >= 1.0
    assert stored["runs"][-1]["tests"] == 2 and 0.0 <= stored["cpu_s"]["test_x.py::test_a"] < 0.3  # sleeping


@pytest.mark.parametrize("marker", ["slow", "multiprocess", "comfyui", "browser"])
def test_markers_are_declared(request, marker):
    """The markers the suite uses are registered (`--strict-markers` rejects typos)."""
    assert any(line.startswith(f"{marker}:") for line in request.config.getini("markers"))


def test_browser_and_multiprocess_tests_are_slow(request):
    """Chromium pages and multi-process runs stay out of the fast tier (docs/testing.md, "Markers"): in a
    `-m "not slow"` run any such test collected without `slow` is listed here."""
    unmarked = [
        item.nodeid
        for item in request.session.items
        if any(item.get_closest_marker(m) for m in ("browser", "multiprocess")) and not item.get_closest_marker("slow")
    ]
    assert not unmarked, "browser / multiprocess but not slow: " + ", ".join(unmarked)
