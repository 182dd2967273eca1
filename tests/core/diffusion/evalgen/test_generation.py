"""Generation on tiny SD3 and FLUX pipelines: fixed seeds, base vs LoRA from the same noise, resume, sharding."""

from __future__ import annotations

import numpy as np
import pytest
from evalgen_common import PROMPTS, tiny_pipe
from PIL import Image

from icthp_core.diffusion.generation import (
    GenerationSettings,
    ModelSpec,
    generate_images,
    image_path,
    missing_items,
    parse_lora,
    plan_items,
    shard_batches,
)
from icthp_core.evaluation.prompt_sets import PromptRecord

RECORDS = [PromptRecord(i, p, {"prompt": p}) for i, p in enumerate(PROMPTS)]
SETTINGS = GenerationSettings(model="tiny", steps=2, guidance=0.0, height=32, width=32, seeds_per_prompt=2)


def _px(root, model, index, n) -> np.ndarray:
    return np.asarray(Image.open(image_path(root, model, index, n))).astype(np.int16)


@pytest.mark.parametrize("arch", ["sd3", "flux"])
def test_fixed_seeds_and_lora_difference(arch, lora_files, tmp_path):
    pipe = tiny_pipe(arch)
    items = plan_items(RECORDS, 2)
    assert [it.seed for it in items] == list(range(6))  # seed + index * seeds_per_prompt + n
    assert generate_images(pipe, SETTINGS, ModelSpec("base"), items, tmp_path, arch, batch_size=4) == 6
    # same seed -> same image (bit for bit with the same batches; up to float rounding with other batch sizes)
    assert generate_images(pipe, SETTINGS, ModelSpec("again"), items, tmp_path, arch, batch_size=4) == 6
    assert generate_images(pipe, SETTINGS, ModelSpec("single"), items, tmp_path, arch, batch_size=1) == 6
    for it in items:
        assert np.array_equal(_px(tmp_path, "base", it.index, it.n), _px(tmp_path, "again", it.index, it.n))
        assert np.abs(_px(tmp_path, "base", it.index, it.n) - _px(tmp_path, "single", it.index, it.n)).max() <= 2
    # another seed -> another image
    assert np.abs(_px(tmp_path, "base", 0, 0) - _px(tmp_path, "base", 0, 1)).mean() > 1
    # the LoRA (loaded through diffusers, then unloaded) changes every image; the base is back afterwards
    lora = ModelSpec("icthp", str(lora_files[arch]))
    assert generate_images(pipe, SETTINGS, lora, items, tmp_path, arch, batch_size=4) == 6
    for it in items:
        assert np.abs(_px(tmp_path, "icthp", it.index, it.n) - _px(tmp_path, "base", it.index, it.n)).mean() > 0.5
    generate_images(pipe, SETTINGS, ModelSpec("after"), items[:1], tmp_path, arch)
    assert np.array_equal(_px(tmp_path, "after", 0, 0), _px(tmp_path, "base", 0, 0))
    # the LoRA scale is applied: scale 0 gives the base image
    generate_images(pipe, SETTINGS, ModelSpec("zero", str(lora_files[arch]), 0.0), items[:1], tmp_path, arch)
    assert np.abs(_px(tmp_path, "zero", 0, 0) - _px(tmp_path, "base", 0, 0)).max() <= 1


def test_lora_for_other_arch_is_refused(lora_files, tmp_path):
    pipe = tiny_pipe("sd3")
    spec = ModelSpec("x", str(lora_files["flux"]))
    with pytest.raises(ValueError, match="trained for a flux pipeline, the base model is sd3"):
        generate_images(pipe, SETTINGS, spec, plan_items(RECORDS[:1], 1), tmp_path, "sd3")


def test_killed_run_resumes_without_regenerating(tmp_path):
    pipe = tiny_pipe("sd3")
    items = plan_items(RECORDS, 2)
    calls = []

    def die_after_first_batch(n):
        calls.append(n)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_images(
            pipe, SETTINGS, ModelSpec("base"), items, tmp_path / "run", "sd3", 2, progress=die_after_first_batch
        )
    todo = missing_items(tmp_path / "run", "base", items)
    assert len(todo) == 4 and calls == [2]
    first = {it: image_path(tmp_path / "run", "base", it.index, it.n).stat().st_mtime_ns for it in items[:2]}
    assert not list((tmp_path / "run").rglob("*.tmp.png"))
    assert generate_images(pipe, SETTINGS, ModelSpec("base"), todo, tmp_path / "run", "sd3", 2) == 4
    assert missing_items(tmp_path / "run", "base", items) == []
    assert {it: image_path(tmp_path / "run", "base", it.index, it.n).stat().st_mtime_ns for it in first} == first
    # the resumed run equals an uninterrupted one
    generate_images(pipe, SETTINGS, ModelSpec("base"), items, tmp_path / "ref", "sd3", 2)
    for it in items:
        assert np.array_equal(
            _px(tmp_path / "run", "base", it.index, it.n), _px(tmp_path / "ref", "base", it.index, it.n)
        )


def test_sharded_processes_give_the_single_process_images(tmp_path):
    """Two processes (run here one after the other, as ranks 0 and 1) write exactly what one process writes."""
    pipe = tiny_pipe("flux")
    items = plan_items(RECORDS, 2)
    shards = [shard_batches(items, 2, r, 2) for r in (0, 1)]
    flat = [it for s in shards for b in s for it in b]
    assert len(flat) == len(items) and set(flat) == set(items)  # a partition: nothing twice, nothing left
    assert not {it for b in shards[0] for it in b} & {it for b in shards[1] for it in b}
    n = [generate_images(pipe, SETTINGS, ModelSpec("base"), items, tmp_path / "two", "flux", 2, r, 2) for r in (0, 1)]
    assert n == [4, 2]
    generate_images(pipe, SETTINGS, ModelSpec("base"), items, tmp_path / "one", "flux", 2)
    for it in items:
        assert np.array_equal(
            _px(tmp_path / "two", "base", it.index, it.n), _px(tmp_path / "one", "base", it.index, it.n)
        )


def test_parse_lora():
    assert parse_lora("out/sd35-icthp/pytorch_lora_weights.safetensors") == ModelSpec(
        "sd35-icthp", "out/sd35-icthp/pytorch_lora_weights.safetensors", 1.0
    )
    assert parse_lora("hp=/x/y@0.5") == ModelSpec("hp", "/x/y", 0.5)
    assert parse_lora("/x/my_lora.safetensors", 0.8) == ModelSpec("my_lora", "/x/my_lora.safetensors", 0.8)
    with pytest.raises(ValueError, match="'base' is reserved"):
        parse_lora("base=/x")
