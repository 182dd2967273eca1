"""tests/warm_servers.py in a pytest session of its own (a subprocess, stdlib `http.server` as the server): started
while collecting when a selected test uses it, not started when `-m` leaves it out, stopped when deselected later, and
stopped at the end of the session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO

# the test tooling's own tests run in the full tier (CI); the fast tier covers the toolkit (docs/testing.md)
pytestmark = [pytest.mark.slow]

CONFTEST = f"""
import os, sys, time
from pathlib import Path
import pytest
sys.path.insert(0, {str(REPO)!r})
from tests import warm_servers
from tests.warm_servers import pytest_collection_finish, pytest_itemcollected, pytest_sessionfinish

EVENTS = Path(os.environ["WS_EVENTS"])

def note(line):
    with EVENTS.open("a") as f:
        f.write(line + "\\n")

def prepare(config):
    note("prepared")
    cmd = lambda port: [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    return warm_servers.Launch(cmd, Path.cwd(), dict(os.environ), Path.cwd() / "server.log")

warm_servers.register("dummy", Path(__file__).parent / "uses", "server", prepare)

@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):  # every item is collected; collection_finish is next
    launch = warm_servers._LAUNCHES.get("dummy")
    note(f"queued at collection: {{launch is not None}}")
    deadline = time.monotonic() + 20
    while launch is not None and launch.proc is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if launch is not None:
        note(f"started pid {{launch.proc.pid}}")

@pytest.fixture(scope="session")
def server(request):
    launch = warm_servers.started("dummy", request.config)
    launch.wait_until_up(30, "dummy")
    note(f"fixture pid {{launch.proc.pid}}")
    yield launch
    launch.stop(5)
"""

TESTS = """
import urllib.request
import pytest

def test_a_without_the_server():
    pass

@pytest.mark.slow
def test_b_uses_the_server(server):
    with urllib.request.urlopen(server.url + "/") as r:
        assert r.status == 200
"""


def _session(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: slow\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "uses").mkdir(exist_ok=True)
    (tmp_path / "uses" / "test_ws.py").write_text(TESTS)
    events = tmp_path / "events.txt"
    events.unlink(missing_ok=True)
    env = dict(os.environ, WS_EVENTS=str(events))
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), *args]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return res, events.read_text().splitlines() if events.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pid(events: list[str], prefix: str) -> int:
    return int(next(e for e in events if e.startswith(prefix)).split()[-1])


def test_started_while_collecting_and_stopped_at_the_end(tmp_path):
    res, events = _session(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert events[:3] == ["prepared", "queued at collection: True", events[2]], events
    started = _pid(events, "started pid")
    assert _pid(events, "fixture pid") == started  # the fixture waited for the early one, started none of its own
    assert not _alive(started)


def test_not_started_when_the_marker_expression_leaves_its_tests_out(tmp_path):
    res, events = _session(tmp_path, "-m", "not slow")
    assert res.returncode == 0, res.stdout + res.stderr
    assert events == ["queued at collection: False"]
    assert "1 passed, 1 deselected" in res.stdout


def test_stopped_when_collection_deselects_its_tests(tmp_path):
    res, events = _session(tmp_path, "--deselect", "uses/test_ws.py::test_b_uses_the_server")
    assert res.returncode == 0, res.stdout + res.stderr
    assert events[:2] == ["prepared", "queued at collection: True"] and len(events) == 3, events
    assert not _alive(_pid(events, "started pid"))  # started early, stopped when collection deselected its test
