"""The app ticks only the metrics whose weights it was given; a baseline that cannot load fails in seconds."""

from __future__ import annotations

import time

import pytest
from icthp_app.launcher import default_ticked as default_metrics
from live import free_port

from icthp_core.diffusion.evalgen import DEFAULT_METRICS
from icthp_core.errors import WeightsNotFoundError


def test_default_metrics_are_the_given_weights():
    offered = ["ict", "hp", "ict_hp", "clip", "pickscore", "aesthetic"]
    assert default_metrics(None, offered, {"ict": "/w/ict", "hp": "/w/hp"}) == ["ict", "hp", "ict_hp"]
    assert default_metrics(None, offered, {"ict": "i", "hp": "h", "pickscore": "/w/ps"}) == [
        "ict",
        "hp",
        "ict_hp",
        "pickscore",
    ]
    assert default_metrics("clip", offered, {}) == ["clip"]
    assert "aesthetic" not in DEFAULT_METRICS  # evalgen: no baseline download unless asked


def test_unloadable_baseline_fails_within_seconds(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from gradio_app.pool import ScorerPool

    url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    pool = ScorerPool(["pickscore"], {}, "cpu", "fp32", 2)
    t0 = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match="yuvalkirstain/PickScore_v1: the Hugging Face Hub"):
        pool.scorer(("pickscore",))
    assert time.monotonic() - t0 < 15
