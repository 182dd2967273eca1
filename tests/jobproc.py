"""Run `icthp JOB ...` as a real process forked from a server that has already imported torch (tests only).

`python -m icthp_cli JOB` pays 3-5 s importing torch and torchvision before the job starts. Here each job is still a
separate process - its own pid, exit code, stdout/stderr, environment and working directory, killable with SIGKILL -
but it is forked from a multiprocessing "forkserver" that preloaded `PRELOAD`. Nothing that reads environment
variables at import (huggingface_hub, transformers, open_clip, diffusers, ray, accelerate) is preloaded: each job
imports those itself and sees its own `HF_HOME`, `HF_HUB_OFFLINE`, ... The child gets /dev/null as stdin, argv[0]
`icthp`, torch threads from its `OMP_NUM_THREADS`, and `PYTHONPATH` entries on sys.path (no sitecustomize, no
interpreter flags: a test of those, of stdin input or of `accelerate launch` keeps a real subprocess).

`shim()` puts the same jobs behind an `icthp` command for shell scripts (the docs tests): a few lines of Python started
with `-I -S` that send their argv, environment, working directory and stdin/stdout/stderr file descriptors to a server
thread in the test process, which forks the job as above onto those descriptors; the shim exits with the job's code
(128+N if signal N killed it), so pipes, redirections and `$?` behave as with the installed command.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import multiprocessing
import multiprocessing.util  # noqa: F401  (its atexit join of children runs after our `_kill_all`)
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import wait
from pathlib import Path

#: imported once by the server; none of them reads HF / Ray / accelerate settings at import
PRELOAD = ["torch", "torchvision", "numpy", "PIL.Image"]
Entry = Callable[[list[str]], "int | None"]
_LIVE: set[Job] = set()


def _context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # takes effect when the server starts (first job)
    return ctx


def warm() -> None:
    """Start the forkserver now: it imports `PRELOAD` in its own process (on the idle core while pytest collects), so
    the first job forks at once instead of waiting ~3 s for torch."""
    from multiprocessing import forkserver

    _context()
    forkserver.ensure_running()


def _icthp_main(argv: list[str]) -> int:
    from icthp_cli.main import main

    return main(argv)


class _Fds:
    """A shim's stdin, stdout and stderr for the child: `Process.start` pickles them as fds sent to the forkserver."""

    def __init__(self, *fds: object):
        self.fds = fds

    def __reduce__(self) -> tuple:
        from multiprocessing.reduction import DupFd

        return _Fds, tuple(DupFd(fd) for fd in self.fds)

    def open(self) -> list[int]:
        """In the child: the inherited fds."""
        return [fd.detach() for fd in self.fds]  # type: ignore[attr-defined]


def _streams(io: str | _Fds) -> list[int]:
    """New fds for 0, 1, 2: /dev/null, OUTDIR/out and OUTDIR/err, or the fds a shim sent."""
    if isinstance(io, _Fds):
        return io.open()
    return [os.open(os.devnull, os.O_RDONLY), os.open(f"{io}/out", os.O_WRONLY), os.open(f"{io}/err", os.O_WRONLY)]


def _std_streams(unbuffered: bool) -> None:
    """New sys.stdin/stdout/stderr on fds 0, 1, 2, made as the interpreter makes them (the server's own belong to its
    fds: one made for a seekable file would seek a shim's pipe in `reconfigure`)."""
    like = sys.__stdout__

    def text(fd: int, mode: str, **kw: object) -> io.TextIOWrapper:
        raw = open(fd, mode, buffering=0 if unbuffered and mode == "wb" else -1, closefd=False)  # noqa: SIM115
        return io.TextIOWrapper(raw, encoding=like.encoding, write_through=unbuffered, **kw)  # type: ignore[arg-type]

    sys.stdin = text(0, "rb", errors=like.errors)
    sys.stdout = text(1, "wb", errors=like.errors, line_buffering=os.isatty(1))
    sys.stderr = text(2, "wb", errors="backslashreplace", line_buffering=True)


def _child(entry: Entry, argv: list[str], env: dict[str, str], cwd: str, io: str | _Fds) -> None:
    """In the forked process: become `icthp ARGV` in ENV and CWD, write to IO (OUTDIR/{out,err}, or a shim's fds),
    exit with its code."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.path[:0] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    for fd, new in enumerate(_streams(io)):
        if new != fd:
            os.dup2(new, fd)
            os.close(new)
    _std_streams(bool(env.get("PYTHONUNBUFFERED")))
    sys.argv = ["icthp", *argv]
    if env.get("OMP_NUM_THREADS", "").isdigit():
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    try:
        rc = entry(argv)
    except SystemExit as e:  # as the interpreter: None -> 0, an int as it is, anything else printed and 1
        rc = e.code if e.code is None or isinstance(e.code, int) else print(e.code, file=sys.stderr) or 1
    except BaseException:  # noqa: BLE001  (a bug: its traceback, exit 1)
        sys.excepthook(*sys.exc_info())
        rc = 1
    getattr(threading, "_shutdown", lambda: None)()  # join non-daemon threads, then atexit, as Py_Finalize does
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit((rc or 0) & 0xFF)


class Job:
    """A running job: the parts of `subprocess.Popen` the tests use (`pid`, `poll`, `wait`, `kill`, `communicate`)."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None,
        cwd: str | Path | None,
        entry: Entry,
        fds: Sequence[int] | None = None,
    ):
        self.args = ["icthp", *map(str, argv)]
        self.returncode: int | None = None
        self._dir = "" if fds else tempfile.mkdtemp(prefix="jobproc-")  # with FDS: no output files
        for name in ("out", "err") if self._dir else ():
            Path(self._dir, name).touch()
        io = _Fds(*fds) if fds else self._dir
        args = (entry, self.args[1:], dict(os.environ if env is None else env), str(cwd or os.getcwd()), io)
        self._proc = _context().Process(target=_child, args=args, name=" ".join(self.args[:2]))
        self._proc.start()
        self.pid: int = self._proc.pid
        _LIVE.add(self)

    def poll(self) -> int | None:
        """The exit code (-N if killed by signal N), or None while it runs."""
        if self.returncode is None and self._proc.exitcode is not None:
            self.returncode = self._proc.exitcode
            _LIVE.discard(self)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit code; `subprocess.TimeoutExpired` (the job still running) after `timeout` seconds."""
        self._proc.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def output(self) -> tuple[str, str]:
        """What the job has written so far to (stdout, stderr); bytes that are not UTF-8 as surrogate escapes."""
        if not self._dir:
            raise ValueError(f"{self.args}: started with file descriptors, its output went to them")
        read = (Path(self._dir, n).read_bytes().decode("utf-8", "surrogateescape") for n in ("out", "err"))
        return next(read), next(read)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait for the exit, then its whole (stdout, stderr); the output files are removed."""
        self.wait(timeout)
        out = self.output()
        shutil.rmtree(self._dir, ignore_errors=True)
        return out


def start(
    argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None, entry: Entry | None = None
) -> Job:
    """Start `icthp ARGV` (or `entry(ARGV)`) in ENV (default: this process's) and CWD (default: this one's)."""
    return Job(argv, env, cwd, entry or _icthp_main)


def start_with_fds(
    argv: Sequence[str], env: dict[str, str], cwd: str | Path, fds: Sequence[int], *, entry: Entry | None = None
) -> Job:
    """Start `icthp ARGV` with FDS (stdin, stdout, stderr) as its fds 0, 1, 2; the caller may close its FDS then."""
    return Job(argv, env, cwd, entry or _icthp_main, fds)


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 600,
    entry: Entry | None = None,
) -> subprocess.CompletedProcess:
    """`subprocess.run(["icthp", *ARGV], capture_output=True, text=True, ...)`, forked: killed on timeout."""
    job = start(argv, env=env, cwd=cwd, entry=entry)
    try:
        out, err = job.communicate(timeout)
    except subprocess.TimeoutExpired as e:
        job.kill()
        e.output, e.stderr = job.communicate()
        raise
    return subprocess.CompletedProcess(job.args, job.returncode, out, err)


_SHIM = """#!{python} -IS
# `icthp` in a test: the job runs forked from the test process's preloaded server (tests/jobproc.py `shim`).
import json, os, socket, sys

with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
    s.connect({sock!r})
    socket.send_fds(s, [json.dumps([sys.argv[1:], dict(os.environ), os.getcwd()]).encode()], [0, 1, 2])
    rc = s.recv(16)
if not rc:
    sys.exit("icthp (test shim): no exit code from the test process")
sys.exit(128 - int(rc) if int(rc) < 0 else int(rc))
"""


class _ShimServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    socket_type = socket.SOCK_SEQPACKET  # one message a run: argv, env and cwd as JSON, with fds 0, 1, 2
    daemon_threads = True
    entry: Entry | None = None


class _ShimRun(socketserver.BaseRequestHandler):
    """One shim run: fork its job onto its fds, wait, reply with the exit code; kill the job if the shim goes away."""

    def handle(self) -> None:
        msg, fds, flags, _ = socket.recv_fds(self.request, 1 << 20, 3, socket.MSG_CMSG_CLOEXEC)
        try:
            if flags & socket.MSG_TRUNC or len(fds) != 3:
                raise ValueError(f"icthp shim: a bad request ({len(msg)} bytes, {len(fds)} fds)")
            argv, env, cwd = json.loads(msg)
            job = start_with_fds(argv, env, cwd, fds, entry=self.server.entry)  # type: ignore[attr-defined]
        finally:
            for fd in fds:  # the child has its copies; ours would keep a pipe open after the job ends
                os.close(fd)
        wait([job._proc.sentinel, self.request])
        if job.poll() is None:  # the shim has gone (killed): so does its job
            job.kill()
        with contextlib.suppress(OSError):
            self.request.send(str(job.wait()).encode())


@contextlib.contextmanager
def shim(entry: Entry | None = None) -> Iterator[Path]:
    """A folder holding an `icthp` command (put it first on PATH) that runs `icthp ARGV` (or `entry(ARGV)`) forked from
    the preloaded server, with the command's own stdin/stdout/stderr, environment and working directory."""
    folder = Path(tempfile.mkdtemp(prefix="icthp-shim-"))
    server = _ShimServer(str(folder / "sock"), _ShimRun)
    server.entry = entry
    (folder / "icthp").write_text(_SHIM.format(python=sys.executable, sock=str(folder / "sock")))
    (folder / "icthp").chmod(0o755)
    threading.Thread(target=server.serve_forever, name="icthp-shim", daemon=True).start()
    try:
        yield folder
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(folder, ignore_errors=True)


@atexit.register
def _kill_all() -> None:
    """Kill jobs a failed test left running (multiprocessing would otherwise wait for them at exit)."""
    for job in list(_LIVE):
        job.kill()
        job.wait()
