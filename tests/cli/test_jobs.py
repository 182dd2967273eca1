"""Every job run as a user runs it, `icthp JOB ...` in its own process, on tiny models: exit 0 and its output on
success, exit 2 and one stderr line naming the bad argument or file on a user error, exit 1 and a traceback on a bug.

`icthp()` forks each job from a server that has imported torch (tests/jobproc.py); every job also runs once through
the real entry point, `python -m icthp_cli JOB --help` in a fresh interpreter (`test_job_help_through_the_real_entry`),
as do the planted-bug and long-running (app, serve) tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from live import free_port, sigint_as_in_a_terminal

from icthp_cli.main import COMMANDS, main
from tests.cli.conftest import REPO, draft_args, icthp, train_args, user_error

MISSING = "/no/such/dir/file.jsonl"

#: one user error per job: (argv, words the one error line must contain)
USER_ERRORS = {
    "score": (["score", "--metrics", "nope", "x.png"], ["--metrics", "nope"]),
    "serve": (["serve", "--max-images", "0"], ["--max-images"]),
    "metrics": (["metrics", "extra"], ["extra"]),
    "download": (["download", "nosuch", "--offline"], ["nosuch"]),
    "eval": (["eval", "--data", MISSING], [MISSING]),
    "app": (["app", "--batch-size", "0"], ["--batch-size"]),
    "train-ict": (["train-ict", "max_steps=abc"], ["max_steps", "is not a valid int"]),
    "train-hp": (["train-hp", "--max_steps", "3"], ["max_steps=VALUE"]),
    "build-labels": (["build-labels", "--data", MISSING, "-o", "/tmp/x.jsonl"], [MISSING]),
    "draft": (["draft", "rank=4"], ["prompts"]),
    "evalgen": (["evalgen", "--model", "m", "--prompts", MISSING, "-o", "/tmp/eg"], [MISSING]),
    "convert-pick-high": (["convert-pick-high", "src"], ["--output"]),
    "toy-data": (["toy-data", "-o", "/tmp/toy", "--triplets", "-1"], ["--triplets"]),
    "explain": (["explain", "x.png", "--grid", "0", "-o", "/tmp/explain"], ["--grid"]),
}


def test_every_job_has_a_user_error_case():
    assert set(USER_ERRORS) == {c.name for c in COMMANDS}


@pytest.mark.parametrize("job", sorted(USER_ERRORS))
def test_user_error_is_one_line_and_exit_2(job):
    argv, names = USER_ERRORS[job]
    user_error(icthp(*argv), job, *names)


@pytest.mark.parametrize(
    "argv,names",
    [
        (["serve", "--workers", "2"], ["--workers"]),  # ignored before: not accepted now
        (["app", "--workers", "2"], ["--workers"]),
        (["app", "--ab-root", "/no/such/dir"], ["--ab-root", "/no/such/dir"]),
        (["train-hp", "--config", "/no/such.yaml"], ["--config", "/no/such.yaml"]),
        (["train-ict", "iterations=3"], ["iterations", "max_steps"]),
        (["download", "--manifest", MISSING, "--list"], ["--manifest", MISSING]),
        (["toy-data"], ["--output"]),
        (["evalgen", "--model", "m", "--prompts", "p.txt", "--outdir", "x"], ["--output"]),  # one spelling: -o
    ],
)
def test_more_user_errors_in_process(argv, names, capsys):
    """The same contract through `main()` (the subprocess cases above show it holds for the command itself)."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    err = capsys.readouterr().err
    user_error(subprocess.CompletedProcess(argv, rc, "", err), argv[0], *names)


def test_unknown_job_and_help():
    res = icthp("nosuchjob")
    assert res.returncode == 2 and res.stderr.strip().startswith("icthp: unknown command 'nosuchjob'")
    res = icthp("--help")
    assert res.returncode == 0 and all(c.name in res.stdout for c in COMMANDS)


@pytest.mark.parametrize("job", [c.name for c in COMMANDS])
def test_job_help_through_the_real_entry(job):
    """`python -m icthp_cli JOB --help` in a fresh interpreter: the real entry point reaches every job."""
    res = subprocess.run([sys.executable, "-m", "icthp_cli", job, "--help"], capture_output=True, text=True, cwd=REPO)
    assert (res.returncode, res.stderr) == (0, ""), res.stderr[-3000:]
    assert res.stdout.startswith(f"usage: icthp {job} ")


def test_metrics_defaults_are_documented_in_each_help(capsys):
    """One `--metrics` default per job family, shown in the job's help."""
    from icthp_cli.options import APP_METRICS, SCORE_METRICS
    from icthp_core.diffusion.evalgen import DEFAULT_METRICS

    for job, default in (("serve", SCORE_METRICS), ("eval", SCORE_METRICS), ("app", APP_METRICS)):
        with pytest.raises(SystemExit):
            main([job, "--help"])
        assert f"default {default}" in " ".join(capsys.readouterr().out.split()), job
    with pytest.raises(SystemExit):
        main(["evalgen", "--help"])
    assert ",".join(DEFAULT_METRICS) in " ".join(capsys.readouterr().out.split())


PLANT = """
import sys
import icthp_core.scoring.registry as registry
from icthp_cli.main import main

class Planted(dict):
    def values(self):
        raise {exc}("planted bug")

registry.METRICS = Planted(registry.METRICS)  # the core's metric table fails as `icthp metrics` reads it
sys.exit(main(["metrics"]))
"""


@pytest.mark.parametrize("exc", ["RuntimeError", "ValueError"])
def test_a_bug_exits_1_with_its_traceback(exc):
    """Only ICTHPError is a user error: a bare ValueError (or any other exception) from the core is a bug."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = PLANT.format(exc=exc)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 1, res.stderr
    assert "Traceback (most recent call last)" in res.stderr and f"{exc}: planted bug" in res.stderr


# ----------------------------------------------------------------------------------------------------- successes
def test_metrics_download_list_toy_data(tmp_path):
    res = icthp("metrics")
    assert res.returncode == 0 and "ict_hp" in res.stdout and res.stderr == ""
    res = icthp("download", "--list")
    assert res.returncode == 0 and "8y/ICT" in res.stdout
    res = icthp("toy-data", "-o", tmp_path / "toy", "--triplets", "3", "--pairs", "2", "--size", "16")
    assert res.returncode == 0, res.stderr
    paths = json.loads(res.stdout)
    assert len(Path(paths["triplets"]).read_text().splitlines()) == 3
    assert len(Path(paths["pairs"]).read_text().splitlines()) == 2


def test_download_missing_files_are_one_error_line(tmp_path):
    res = icthp("download", "ict", "--dir", tmp_path, "--offline")
    assert res.stdout.count("missing") >= 1
    user_error(res, "download", "missing")


@pytest.mark.slow
def test_score_and_eval(tiny_ict, tiny_hp, image_dir, toy, tmp_path):
    models = ["--ict", tiny_ict, "--hp", tiny_hp, "--device", "cpu", "--workers", "0"]
    res = icthp("score", image_dir, "--prompt", "a cat", *models, "--no-progress", "-o", tmp_path / "s.jsonl")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ICT-HP" in res.stdout and len((tmp_path / "s.jsonl").read_text().splitlines()) == 6
    res = icthp("eval", "--data", toy["triplets"], *models, "--bootstrap", "10", "-o", tmp_path / "r.json")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ICT-HP" in res.stdout and json.loads((tmp_path / "r.json").read_text())["kind"] == "triplets"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    user_error(icthp("eval", "--data", toy["triplets"], *models, "-o", blocker / "r.json"), "eval", "--output")


def _pick_high(root: Path) -> None:
    import pandas as pd
    from PIL import Image

    (root / "Pick-High").mkdir(parents=True)
    for sub, name in (("pick_easy_img/val", "l.jpg"), ("pick_easy_img/val", "w.jpg"), ("pick_refine_img/val", "r.jpg")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (200, 10, 10)).save(root / sub / name)
    row = {"easy_prompt": "a cat", "refine_prompt": "a cat, 8k", "easy_image_0": "l.jpg", "easy_image_1": "w.jpg"}
    row |= {"refine_image": "r.jpg", "E1": 0.1, "E2": 0.7, "R1": 0.05, "R2": 0.6}
    pd.DataFrame([row]).to_pickle(root / "Pick-High" / "val.pkl")


def test_convert_pick_high(tmp_path):
    _pick_high(tmp_path / "src")
    args = ["convert-pick-high", tmp_path / "src", "-o", tmp_path / "out", "--splits", "val"]
    user_error(icthp(*args), "convert-pick-high", "trust")
    res = icthp(*args, "--trust-pickle")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout) == {"val": str(tmp_path / "out" / "val.jsonl")}
    assert len((tmp_path / "out" / "val.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow
def test_build_labels(tiny_clip, toy, tmp_path):
    out = tmp_path / "labeled.jsonl"
    args = ["build-labels", "--data", toy["triplets"], "-o", out, "--clip", tiny_clip, "--device", "cpu"]
    # a random tiny CLIP: its CLIP(I3, P_easy) percentile is not a usable threshold, said in one line
    user_error(icthp(*args), "build-labels", "theta", "percentile")
    res = icthp(*args, "--theta", "0.05")
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout)
    assert got == {"out": str(out), "theta": 0.05, "rows": 16}
    assert json.loads(Path(f"{out}.meta.json").read_text())["theta_percentile"] is None
    assert len(out.read_text().splitlines()) == 16


@pytest.mark.slow
def test_train_ict_then_train_hp_exit_0(tiny_clip, toy, tmp_path):
    """`icthp train-ict && icthp train-hp` runs both stages (the summary used to end the first with exit 1)."""
    res = icthp("train-ict", *train_args(tiny_clip, toy, tmp_path / "ict", theta=0.05))
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert (summary["stage"], summary["steps"]) == ("ict", 2)
    assert summary["exported"] == str(tmp_path / "ict" / "ICT") and (tmp_path / "ict" / "ICT").is_dir()
    hp_args = train_args(tiny_clip, toy, tmp_path / "hp", head_dims="[16,8,4,4]", ict_model=tmp_path / "ict" / "ICT")
    res = icthp("train-hp", *hp_args)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert (summary["stage"], summary["steps"]) == ("hp", 2) and (tmp_path / "hp" / "HP").is_dir()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_accelerate_launch_train_ict(tiny_clip, toy, tmp_path):
    launch = ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    res = icthp(
        "train-ict",
        *train_args(tiny_clip, toy, tmp_path / "ict", theta=0.05),
        launch=launch,
        env={"ACCELERATE_USE_CPU": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert (summary["stage"], summary["num_processes"]) == ("ict", 1) and (tmp_path / "ict" / "ICT").is_dir()


@pytest.mark.slow
def test_draft_tiny_sd3(tiny_pipeline_dirs, tiny_ict, tiny_hp, tmp_path):
    args, out = draft_args(tiny_pipeline_dirs["sd3"], tiny_ict, tiny_hp, tmp_path)
    res = icthp("draft", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    lora = Path(json.loads(res.stdout.strip().splitlines()[-1])["lora"])
    assert lora == out / "pytorch_lora_weights.safetensors" and lora.is_file()


@pytest.mark.slow
def test_evalgen_tiny_sd3(tiny_pipeline_dirs, tiny_ict, tiny_hp, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red car\n")
    out = tmp_path / "eg"
    res = icthp(
        "evalgen", "--model", tiny_pipeline_dirs["sd3"], "--prompts", prompts, "-o", out, "--size", "32",
        "--steps", "1", "--metrics", "ict,hp,ict_hp", "--ict", tiny_ict, "--hp", tiny_hp, "--device", "cpu",
        "--workers", "0", "--no-progress", "--gen-dtype", "fp32",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "report:" in res.stdout and (out / "summary.md").is_file()


def _wait_for(url: str, marker: str, proc: subprocess.Popen, deadline_s: float) -> None:
    """Until `marker` is on the job's stdout (it is ready) and `url` answers 200."""
    deadline = time.monotonic() + deadline_s
    for line in proc.stdout:  # the job prints its ready line once, flushed
        if marker in line:
            break
        assert time.monotonic() < deadline, f"no {marker!r} line in {deadline_s} s"
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the job exited"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {deadline_s} s")


def _signals(pid: int) -> str:
    """The signal lines of /proc/PID/status (blocked, ignored, caught), to tell why a Ctrl-C went unanswered."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as e:
        return str(e)
    return " ".join(
        x.replace("\t", "") for x in lines if x.startswith(("State", "Threads", "SigBlk", "SigIgn", "SigCgt"))
    )


def _long_running(argv: list, url_path: str, marker: str, deadline_s: float, log: Path):
    """Start a long-running job, wait until it is ready, stop it with Ctrl-C: (exit code, stdout rest, stderr)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "icthp_cli", *map(str, argv), "--port", str(port)]
    with open(log, "w") as err:
        here = _signals(os.getpid())
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True, preexec_fn=sigint_as_in_a_terminal
        )
        try:
            _wait_for(f"http://127.0.0.1:{port}{url_path}", marker, proc, deadline_s)
            job = _signals(proc.pid)
            proc.send_signal(signal.SIGINT)
            try:
                out, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                stuck = f"job at start: {job}; after Ctrl-C: {_signals(proc.pid)}; pytest: {here}"
                raise AssertionError(
                    f"{argv[0]} still runs 60 s after Ctrl-C ({stuck}):\n{log.read_text()[-3000:]}"
                ) from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, out, log.read_text()


@pytest.mark.slow
def test_app_serves_and_stops(tiny_ict, tiny_hp, tmp_path):
    rc, _, err = _long_running(
        ["app", "--ict", tiny_ict, "--hp", tiny_hp, "--device", "cpu"], "/", "Running on", 180, tmp_path / "log"
    )
    assert rc in (0, 130), err[-3000:]  # Ctrl-C while serving: gradio returns or the interrupt reaches icthp


@pytest.mark.slow
@pytest.mark.multiprocess
def test_serve_serves_and_stops(tiny_ict, tiny_hp, tmp_path):
    argv = ["serve", "--ict", tiny_ict, "--hp", tiny_hp, "--device", "cpu"]
    rc, _, err = _long_running(argv, "/health", "icthp serve: http://127.0.0.1:", 300, tmp_path / "log")
    assert rc == 0, err[-3000:]  # Ctrl-C once serving stops Ray Serve and exits 0
