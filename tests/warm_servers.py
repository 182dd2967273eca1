"""Live servers that start while pytest is still collecting (`icthp app`, ComfyUI).

A folder conftest registers its server (`register`): the session fixture it backs and a `prepare(config)` that writes
what the server needs (tiny models, folders) in the main thread and returns a `Launch`. As soon as a test that uses
the fixture is collected (and its markers pass `-m`), the server is prepared and a background thread starts it — the
same subprocess, command and environment as when the fixture started it itself — one server at a time, the next one
once the previous answers. The fixture (`started`) then only waits for it to answer, and stops it at the end of the
session. The start-up thus overlaps collection and the tests before it on the second core. Servers no selected test
uses are stopped when collection finishes; nothing is started under `--collect-only`. The thread only starts
processes and polls URLs: it never imports or runs torch (Playwright's sync API, which must stay in the main thread,
is not touched either).
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from tests.live import free_port


@dataclass
class Launch:
    """A server subprocess: `command(port)` run in `cwd` with `env`, output to `log`; up once `ready_path` answers.
    `info` is what the fixture yields besides the URL."""

    command: Callable[[int], list[str]]
    cwd: Path
    env: dict[str, str]
    log: Path
    ready_path: str = "/"
    info: dict[str, Any] = field(default_factory=dict)
    url: str = ""
    proc: subprocess.Popen | None = None
    _out: IO | None = None
    _stopped: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Start the process unless it is started (safe from any thread; the port is picked right before)."""
        with self._lock:
            if self.proc is not None or self._stopped:
                return
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            self._out = open(self.log, "w")  # noqa: SIM115  (closed by stop)
            cmd = self.command(port)
            self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=self.env, stdout=self._out, stderr=subprocess.STDOUT)

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as r:
                r.read(100)
            return True
        except OSError:
            return False

    def wait_until_up(self, seconds: float, what: str) -> None:
        """Poll (0.1 s) until the server answers; fail with the log's tail if it exits or takes over `seconds`."""
        deadline = time.monotonic() + seconds
        while not self.answers():
            if self.proc.poll() is not None:
                pytest.fail(f"{what} exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not answer on {self.url} in {seconds:.0f} s:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.1)

    def stop(self, timeout: float = 15) -> None:
        """Terminate (kill after `timeout` s) and close the log; idempotent, and no start afterwards."""
        with self._lock:
            proc, self.proc, self._stopped = self.proc, None, True
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._out is not None:
            self._out.close()
            self._out = None


@dataclass
class _Spec:
    name: str
    folder: Path
    fixture: str
    prepare: Callable[[pytest.Config], Launch]


_SPECS: dict[str, _Spec] = {}
_LAUNCHES: dict[str, Launch] = {}
_QUEUE: queue.Queue[Launch | None] = queue.Queue()
_THREAD: list[threading.Thread] = []
_STOPPING = threading.Event()


def register(name: str, folder: Path, fixture: str, prepare: Callable[[pytest.Config], Launch]) -> None:
    """Tests under `folder` whose fixtures include `fixture` use the server that `prepare` describes."""
    _SPECS[name] = _Spec(name, Path(folder).resolve(), fixture, prepare)


def started(name: str, config: pytest.Config) -> Launch:
    """The named server, started: early by the background thread, or prepared and started now."""
    launch = _LAUNCHES.get(name)
    if launch is None:
        launch = _LAUNCHES[name] = _SPECS[name].prepare(config)
    launch.start()
    return launch


def _starter() -> None:
    """Start the queued servers one at a time; the next once the previous answers (or exits, or 5 minutes pass)."""
    while (launch := _QUEUE.get()) is not None:
        try:
            launch.start()
        except Exception:  # noqa: BLE001  (the fixture starts it again and reports the error)
            continue
        deadline = time.monotonic() + 300
        while not _STOPPING.is_set() and time.monotonic() < deadline:
            proc = launch.proc
            if proc is None or proc.poll() is not None or launch.answers():
                break
            time.sleep(0.2)


def _queue(spec: _Spec, config: pytest.Config) -> None:
    if spec.name in _LAUNCHES:
        return
    try:
        _LAUNCHES[spec.name] = spec.prepare(config)
    except Exception:  # noqa: BLE001  (the fixture prepares it again and reports the error)
        return
    if not _THREAD:
        _THREAD.append(threading.Thread(target=_starter, name="warm-servers", daemon=True))
        _THREAD[0].start()
    _QUEUE.put(_LAUNCHES[spec.name])


def _users(item: pytest.Item) -> list[_Spec]:
    names = getattr(item, "fixturenames", ())
    if item.get_closest_marker("skip") is not None:
        return []
    return [s for s in _SPECS.values() if s.fixture in names and item.path.resolve().is_relative_to(s.folder)]


def _passes_marks(item: pytest.Item) -> bool:
    """Whether `-m` keeps the item (pytest's own expression; False when it cannot tell)."""
    expr = item.config.option.markexpr
    if not expr:
        return True
    try:
        from _pytest.mark.expression import Expression

        names = {m.name for m in item.iter_markers()}
        return Expression.compile(expr).evaluate(lambda name, /, **kwargs: name in names)
    except Exception:  # noqa: BLE001  (then collection_finish decides)
        return False


def _early(config: pytest.Config) -> bool:
    return not (config.option.collectonly or config.option.setuponly or config.option.setupplan)


def pytest_itemcollected(item: pytest.Item) -> None:
    """Start a server as soon as a test that may run uses it (with `-k` only once collection is done)."""
    if _early(item.config) and not item.config.option.keyword and _passes_marks(item):
        for spec in _users(item):
            _queue(spec, item.config)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop the servers no selected test uses; start the others, in the order the tests first use them."""
    if not _early(session.config):
        return
    needed = [spec for item in session.items for spec in _users(item)]
    for name in set(_LAUNCHES) - {s.name for s in needed}:
        _LAUNCHES.pop(name).stop()
    for spec in needed:
        _queue(spec, session.config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop whatever is still running (the fixtures stop the servers they used)."""
    _STOPPING.set()
    _QUEUE.put(None)
    for launch in _LAUNCHES.values():
        launch.stop()
