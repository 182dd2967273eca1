"""Prompt sets: Parti-Prompts TSV, GenEval metadata JSONL, plain text, with metadata rows kept."""

from __future__ import annotations

import json

import pytest

from icthp_core.evaluation.prompt_sets import load_prompt_set


def test_parti_tsv(tmp_path):
    f = tmp_path / "PartiPrompts.tsv"
    f.write_text(
        "Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\t\na red apple\tFood & Beverage\tColors\tx\n"
    )
    recs = load_prompt_set(f)
    assert [r.prompt for r in recs] == ["bond", "a red apple"]
    assert [r.index for r in recs] == [0, 1]
    assert recs[1].metadata == {
        "Prompt": "a red apple",
        "Category": "Food & Beverage",
        "Challenge": "Colors",
        "Note": "x",
        "prompt": "a red apple",
    }
    assert recs[0].metadata["Note"] is None  # empty cell: JSON null, not NaN
    assert len(load_prompt_set(f, limit=1)) == 1


def test_geneval_jsonl_rows_unchanged(tmp_path):
    rows = [
        {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
        {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [], "prompt": "two cats"},
    ]
    f = tmp_path / "evaluation_metadata.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = load_prompt_set(f)
    assert [r.metadata for r in recs] == rows
    assert [r.prompt for r in recs] == ["a photo of a bench", "two cats"]


def test_txt_and_errors(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a cat\n\n  a dog  \n")
    assert [(r.index, r.prompt, r.metadata) for r in load_prompt_set(f)] == [
        (0, "a cat", {"prompt": "a cat"}),
        (1, "a dog", {"prompt": "a dog"}),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": ""}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: empty prompt"):
        load_prompt_set(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not JSON"):
        load_prompt_set(broken)
    with pytest.raises(ValueError, match="no column 'caption'"):
        load_prompt_set(bad, column="caption")
    with pytest.raises(FileNotFoundError, match="prompt file not found"):
        load_prompt_set(tmp_path / "missing.tsv")
