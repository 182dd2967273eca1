"""Background-decoded batch scoring keeps item order, isolates bad files and matches in-memory scoring."""

from __future__ import annotations

import torch

from icthp_core import load_scorer


def test_score_files_with_workers_keeps_order_and_reports_errors(tiny_ict, tiny_hp, image_dir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    paths = sorted(str(p) for p in image_dir.iterdir())
    items = [(p, f"prompt {i % 2}") for i, p in enumerate(paths)]
    items.insert(2, (str(bad), "prompt 0"))
    s = load_scorer(tiny_ict, tiny_hp, device="cpu")
    rows = list(s.score_files(items, batch_size=3, num_workers=2))
    assert [r["image"] for r in rows] == [i[0] for i in items]
    assert rows[2]["error"] is not None and "bad.png" in rows[2]["error"] and "ict" not in rows[2]
    good = [r for r in rows if r["error"] is None]
    ref = s.score([r["image"] for r in good], [r["prompt"] for r in good])
    assert torch.allclose(torch.tensor([r["ict_hp"] for r in good]), ref["ict_hp"], atol=1e-6)


def test_text_features_are_cached_per_distinct_prompt(tiny_ict, tiny_hp, monkeypatch):
    s = load_scorer(tiny_ict, tiny_hp, device="cpu")
    calls = []
    orig = s.models["ict"].encode_text
    monkeypatch.setattr(s.models["ict"], "encode_text", lambda t: calls.append(t.shape[0]) or orig(t))
    s.score(torch.rand(6, 3, 64, 64), ["a", "b", "a", "b", "a", "c"], batch_size=4)
    s.score(torch.rand(2, 3, 64, 64), ["a", "c"])
    assert calls == [2, 1]  # batch 1: {a, b}; batch 2: {c}; second call: all cached


def test_batch_size_does_not_change_scores(tiny_ict, tiny_hp):
    s = load_scorer(tiny_ict, tiny_hp, device="cpu")
    x = torch.rand(5, 3, 300, 260)
    a, b = s.score(x, "a cat", batch_size=1), s.score(x, "a cat", batch_size=5)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6)


def test_empty_batch_is_an_error(tiny_ict, tiny_hp):
    import pytest

    s = load_scorer(tiny_ict, tiny_hp, device="cpu")
    with pytest.raises(ValueError, match="empty"):
        s.score([], "a cat")
