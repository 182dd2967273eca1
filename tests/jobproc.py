"""Run `icthp JOB ...` as a real process forked from a server that has already imported torch (tests only).

`python -m icthp_cli JOB` pays 3-5 s importing torch and torchvision before the job starts. Here each job is still a
separate process - its own pid, exit code, stdout/stderr, environment and working directory, killable with SIGKILL -
but it is forked from a multiprocessing "forkserver" that preloaded `PRELOAD`. Nothing that reads environment
variables at import (huggingface_hub, transformers, open_clip, diffusers, ray, accelerate) is preloaded: each job
imports those itself and sees its own `HF_HOME`, `HF_HUB_OFFLINE`, ... The child gets /dev/null as stdin, argv[0]
`icthp`, torch threads from its `OMP_NUM_THREADS`, and `PYTHONPATH` entries on sys.path (no sitecustomize, no
interpreter flags: a test of those, of stdin input or of `accelerate launch` keeps a real subprocess).
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # noqa: F401  (its atexit join of children runs after our `_kill_all`)
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

#: imported once by the server; none of them reads HF / Ray / accelerate settings at import
PRELOAD = ["torch", "torchvision", "numpy", "PIL.Image"]
Entry = Callable[[list[str]], "int | None"]
_LIVE: set[Job] = set()


def _context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # takes effect when the server starts (first job)
    return ctx


def _icthp_main(argv: list[str]) -> int:
    from icthp_cli.main import main

    return main(argv)


def _child(entry: Entry, argv: list[str], env: dict[str, str], cwd: str, outdir: str) -> None:
    """In the forked process: become `icthp ARGV` in ENV and CWD, write to OUTDIR/{out,err}, exit with its code."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.path[:0] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    streams = ((0, os.devnull, os.O_RDONLY), (1, f"{outdir}/out", os.O_WRONLY), (2, f"{outdir}/err", os.O_WRONLY))
    for fd, path, flags in streams:
        new = os.open(path, flags)
        os.dup2(new, fd)
        os.close(new)
    sys.stdin, sys.stdout, sys.stderr = open(0, closefd=False), sys.__stdout__, sys.__stderr__  # noqa: SIM115
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
    import threading

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

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None, cwd: str | Path | None, entry: Entry):
        self.args = ["icthp", *map(str, argv)]
        self.returncode: int | None = None
        self._dir = tempfile.mkdtemp(prefix="jobproc-")
        for name in ("out", "err"):
            Path(self._dir, name).touch()
        args = (entry, self.args[1:], dict(os.environ if env is None else env), str(cwd or os.getcwd()), self._dir)
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


@atexit.register
def _kill_all() -> None:
    """Kill jobs a failed test left running (multiprocessing would otherwise wait for them at exit)."""
    for job in list(_LIVE):
        job.kill()
        job.wait()
