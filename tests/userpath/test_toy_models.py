"""`icthp toy-data -o DIR --models`: the printed commands run every job on the tiny random models, on a CPU."""

from __future__ import annotations

import shlex

import jobproc
import pytest

from icthp_core.testing.toy import MEANINGLESS, toy_commands


def test_a_command_for_every_job_that_needs_models():
    jobs = {job.split()[0] for job, _ in toy_commands("demo")}
    assert jobs == {"score", "eval", "build-labels", "train-ict", "train-hp", "draft", "evalgen", "app"}
    assert all(cmd.startswith("icthp ") for _, cmd in toy_commands("my demo"))
    assert "'my demo/models/ict'" in toy_commands("my demo")[0][1]  # a folder with a space stays one argument


@pytest.mark.slow  # every job once, in process (~1-2 min on a 2-core machine)
def test_printed_commands_run_every_job(tmp_path, monkeypatch):
    from icthp_cli.main import main as icthp

    monkeypatch.chdir(tmp_path)
    proc = jobproc.run(["toy-data", "-o", "demo", "--models", "--triplets", "8", "--pairs", "8"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert MEANINGLESS in proc.stdout
    printed = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("icthp ")]
    assert len(printed) == len(toy_commands("demo"))
    for line in printed:
        argv = shlex.split(line, comments=True)[1:]
        if argv[0] == "app":  # serving: check its options parse and the app builds, without launching
            from icthp_app import make_app

            from icthp_cli.app import config
            from icthp_cli.main import build_parser

            make_app(config(build_parser("app")[0].parse_args([*argv[1:], "--lazy"])))  # no loading thread here
            continue
        assert icthp(argv) == 0, line
    assert (tmp_path / "demo" / "runs" / "evalgen" / "summary.csv").is_file()
