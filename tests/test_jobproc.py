"""`tests/jobproc.py`: a job forked from the preloaded server, directly or through the `icthp` shim, is still its own
process (exit code, output, env, cwd, signals; through the shim also stdin, pipes and redirections) and sees its own
HF settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jobproc
import pytest

# the test tooling's own tests run in the full tier (CI); the fast tier covers the toolkit (docs/testing.md)
pytestmark = [pytest.mark.slow]


def probe(argv: list[str]) -> int | None:
    """A job that reports what its process looks like, or exits / fails / sleeps as `argv` asks."""
    what, *rest = argv
    if what == "report":
        preloaded = {m: m in sys.modules for m in ("torch", "torchvision", "huggingface_hub", "transformers")}
        import huggingface_hub.constants as hf
        import torch

        info = {"pid": os.getpid(), "cwd": os.getcwd(), "argv0": sys.argv[0], "stdin": sys.stdin.read(),
                "offline": hf.HF_HUB_OFFLINE, "hf_home": hf.HF_HOME, "threads": torch.get_num_threads(),
                "mark": os.environ.get("JOBPROC_MARK"), "preloaded": preloaded}  # fmt: skip
        print(json.dumps(info))
        return 0
    if what == "exit":
        raise SystemExit(None if not rest else int(rest[0]) if rest[0].isdigit() else rest[0])
    if what == "bug":
        raise ValueError("planted bug")
    if what == "bytes":  # a file name that is not UTF-8, printed as Python prints it (surrogateescape)
        print(os.fsdecode(b"caf\xe9.png"))
        print("err \u2028 line", file=sys.stderr)
        return 0
    Path(rest[0]).write_text(str(os.getpid()))  # "sleep PIDFILE"
    time.sleep(600)
    return 0


def test_icthp_exit_codes_and_prog_name():
    res = jobproc.run(["metrics"])
    assert (res.returncode, res.stderr) == (0, "") and "ict_hp" in res.stdout
    res = jobproc.run(["nosuchjob"])
    assert res.returncode == 2 and res.stderr.startswith("icthp: unknown command 'nosuchjob'")
    res = jobproc.run(["score", "--bogus"])
    assert res.returncode == 2 and res.stderr.startswith("icthp score: unrecognized arguments: --bogus"), res.stderr


@pytest.mark.parametrize(
    ("argv", "code", "err"),
    [(["exit"], 0, ""), (["exit", "3"], 3, ""), (["exit", "why"], 1, "why\n"), (["bug"], 1, "ValueError: planted bug")],
)
def test_exit_codes_as_the_interpreter(argv, code, err):
    res = jobproc.run(argv, entry=probe)
    assert res.returncode == code, res.stderr
    assert err in res.stderr and (err or res.stderr == "")
    assert ("Traceback (most recent call last)" in res.stderr) == (argv == ["bug"])


def test_own_env_cwd_and_hf_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    runs = []
    for i, offline in enumerate(("1", "0")):
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": offline,
            "HF_HOME": str(tmp_path / f"hf{i}"),
            "OMP_NUM_THREADS": str(i + 1),
        }
        res = jobproc.run(["report"], env={**env, "JOBPROC_MARK": str(i)}, cwd=tmp_path, entry=probe)
        assert res.returncode == 0, res.stderr
        runs.append(json.loads(res.stdout))
    for i, info in enumerate(runs):
        assert info["offline"] is (i == 0) and info["hf_home"] == str(tmp_path / f"hf{i}")
        assert (info["mark"], info["threads"], info["cwd"], info["argv0"], info["stdin"]) == (
            str(i), i + 1, str(tmp_path), "icthp", "")  # fmt: skip
        assert info["pid"] != os.getpid()
        # torch came from the server; the HF modules were imported by the job itself, under its own env
        assert info["preloaded"] == {
            "torch": True,
            "torchvision": True,
            "huggingface_hub": False,
            "transformers": False,
        }
    assert "JOBPROC_MARK" not in os.environ and os.environ["HF_HUB_OFFLINE"] == "0"


def test_sigkill_and_timeout(tmp_path):
    job = jobproc.start(["sleep", str(tmp_path / "pid")], entry=probe)
    while not (tmp_path / "pid").exists():
        assert job.poll() is None
        time.sleep(0.01)
    assert int((tmp_path / "pid").read_text()) == job.pid
    with pytest.raises(subprocess.TimeoutExpired):
        job.wait(0.1)
    job.send_signal(signal.SIGKILL)
    assert job.wait(30) == -signal.SIGKILL and job.communicate() == ("", "")

    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        jobproc.run(["sleep", str(tmp_path / "pid2")], entry=probe, timeout=1)
    assert time.monotonic() - start < 30
    assert not Path(f"/proc/{(tmp_path / 'pid2').read_text()}").exists()  # killed and reaped


def test_output_that_is_not_utf8():
    res = jobproc.run(["bytes"], entry=probe)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "caf\udce9.png\n" and os.fsencode(res.stdout) == b"caf\xe9.png\n"
    assert res.stderr == "err \u2028 line\n"


@pytest.fixture(scope="module")
def shims() -> dict[str, dict[str, str]]:
    """Environments whose `icthp` is a `jobproc.shim`: of the real entry ("icthp") and of `probe` ("probe")."""
    with jobproc.shim() as real, jobproc.shim(entry=probe) as fake:
        yield {
            name: {**os.environ, "PATH": f"{d}{os.pathsep}{os.environ['PATH']}"}
            for name, d in (("icthp", real), ("probe", fake))
        }


def bash(script: str, env: dict[str, str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], env=env, cwd=cwd, capture_output=True, timeout=120, **kw
    )


def test_shim_runs_the_real_entry_with_pipes_redirections_and_exit_codes(shims, tmp_path):
    script = (
        "icthp --help | grep -c '^  score' > piped.txt\n"  # stdout through a pipe
        'set +e; icthp nosuchjob 2> err.txt; echo "rc=$?"; icthp score --bogus; echo "rc=$?"\n'
    )
    res = bash(script, shims["icthp"], tmp_path, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "piped.txt").read_text() == "1\n"
    assert (tmp_path / "err.txt").read_text().startswith("icthp: unknown command 'nosuchjob'")
    assert res.stdout == "rc=2\nrc=2\n"
    assert res.stderr.startswith("icthp score: unrecognized arguments: --bogus"), res.stderr


def test_shim_gives_the_job_its_stdin_cwd_env_and_streams(shims, tmp_path):
    (tmp_path / "sub").mkdir()
    script = (
        "cd sub && printf 'in\\nput' | JOBPROC_MARK=m HF_HUB_OFFLINE=1 icthp report | cat > report.json\n"
        "icthp bytes > bytes.out 2> bytes.err\n"
        'set +e; icthp exit 3; echo "rc=$?"; icthp exit why; echo "rc=$?"; icthp bug; echo "rc=$?"\n'
    )
    res = bash(script, {**shims["probe"], "OMP_NUM_THREADS": "2"}, tmp_path)
    assert res.returncode == 0, res.stderr
    info = json.loads((tmp_path / "sub" / "report.json").read_text())
    assert (info["stdin"], info["cwd"], info["mark"], info["offline"], info["argv0"], info["threads"]) == (
        "in\nput", str(tmp_path / "sub"), "m", True, "icthp", 2)  # fmt: skip
    assert info["pid"] != os.getpid() and info["preloaded"]["torch"] and not info["preloaded"]["transformers"]
    assert (tmp_path / "sub" / "bytes.out").read_bytes() == b"caf\xe9.png\n"
    assert (tmp_path / "sub" / "bytes.err").read_text() == "err \u2028 line\n"
    assert res.stdout == b"rc=3\nrc=1\nrc=1\n"
    err = res.stderr.decode()
    assert err.startswith("why\n") and "ValueError: planted bug" in err and err.count("Traceback") == 1


def test_shim_exit_on_a_signal_and_a_killed_shim_kills_its_job(shims, tmp_path):
    script = (
        "icthp sleep job.pid & shim=$!\n"
        "until [ -s job.pid ]; do sleep 0.05; done\n"
        'kill -9 $(cat job.pid); set +e; wait $shim; echo "rc=$?"\n'  # the job killed: the shim exits 128+9
        "icthp sleep job2.pid & shim=$!\n"
        "until [ -s job2.pid ]; do sleep 0.05; done\n"
        'kill -9 $shim; wait $shim; echo "rc=$?"\n'  # the shim killed: so is its job
        "for i in $(seq 200); do [ -e /proc/$(cat job2.pid) ] || break; sleep 0.05; done\n"
        "[ -e /proc/$(cat job2.pid) ] && echo job2 alive || echo job2 gone\n"
    )
    res = bash(script, shims["probe"], tmp_path, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "rc=137\nrc=137\njob2 gone\n", res.stderr
