"""The tiny hub cache: every default repo id resolves through the real hub code, offline, from the user's command."""

from __future__ import annotations

from pathlib import Path

import jobproc
import pytest

from icthp_core.scoring.registry import METRICS, parse_metrics
from icthp_core.testing.hub_cache import REPOS, commit_of, expand, repo_folder, write_hub_cache


def test_layout_is_the_hub_cache_layout(hub_home):
    for repo in REPOS:
        folder = repo_folder(hub_home, repo)
        assert (folder / "refs" / "main").read_text() == commit_of(repo)
        assert any((folder / "snapshots" / commit_of(repo)).iterdir())


def test_every_default_source_has_a_tiny_model():
    sources = {s.default_source for s in METRICS.values() if s.default_source}
    assert sources <= set(REPOS), sources - set(REPOS)


def test_unknown_repo_is_named(tmp_path):
    with pytest.raises(ValueError, match="no tiny model for 'acme/x'"):
        write_hub_cache(tmp_path, ["acme/x"])
    assert expand(["rewards"]) == ["8y/ICT", "8y/HP"]


@pytest.mark.slow  # one subprocess loading all eleven metrics (~10 s on a busy 2-core machine)
def test_score_every_metric_from_the_cache(hub_env, tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), "blue").save(tmp_path / "a.png")
    argv = ["score", "--metrics", "all", "--prompt", "a blue sky", "a.png", "--device", "cpu"]
    proc = jobproc.run(argv, env=hub_env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    header = proc.stdout.strip().splitlines()[0].split()
    for name in parse_metrics("all"):
        assert METRICS[name].label.split()[0] in header, (name, header)


def test_base_pipeline_from_the_cache(hub_home, monkeypatch):
    from huggingface_hub import constants

    from icthp_core.diffusion.pipelines import pipeline_info

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(Path(hub_home) / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pipeline_info("stabilityai/stable-diffusion-3.5-large-turbo") == ("sd3", False)
    assert pipeline_info("black-forest-labs/FLUX.1-schnell")[0] == "flux"
