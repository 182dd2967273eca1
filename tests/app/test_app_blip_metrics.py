"""The app's scorer pool scores the BLIP-family metrics (tiny random models) like the core scorer does."""

from __future__ import annotations

import numpy as np
from icthp_app.pool import ScorerPool
from PIL import Image

from icthp_core.scoring.scorer import MultiScorer
from icthp_core.testing.blip import save_tiny_blip_retrieval, save_tiny_imagereward


def test_pool_scores_imagereward_and_blip(tmp_path):
    ir = save_tiny_imagereward(tmp_path / "ir", seed=1)
    blip = save_tiny_blip_retrieval(tmp_path / "blip", seed=2)
    sources = {"imagereward": str(ir), "blip_itc": str(blip), "blip_itm": str(blip)}
    metrics = ["imagereward", "blip_itc", "blip_itm"]
    pool = ScorerPool(metrics, sources, device="cpu", batch_size=2)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (60 + 10 * i, 50, 3), dtype=np.uint8)) for i in range(3)]
    got = pool.score(images, "a red car", metrics)
    assert sorted(pool.loaded()) == [("blip_itc",), ("blip_itm",), ("imagereward",)]
    want = MultiScorer(metrics, sources, device="cpu").score(images, "a red car")
    for m in metrics:
        np.testing.assert_allclose(got[m], want[m].numpy(), rtol=1e-5, atol=1e-6)
    assert (got["blip_itm"] >= 0).all() and (got["blip_itm"] <= 1).all()
