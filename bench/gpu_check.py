"""One prepared GPU check: correctness and speed of the GPU path in one command, JSON + Markdown report.

    python bench/gpu_check.py --out DIR            # on a CUDA machine, <= 8 minutes on one H100/H200
    python bench/gpu_check.py --out DIR --dry-run  # tiny sizes on CPU, seconds (part of the test suite)
    bash scripts/gpu_check.sh DIR                  # installs carried wheels (.whl/) offline first

Parts (each in its own process with its own time limit; a failing or timed-out part is reported, the rest run).
By default (issue 23, <= 470 s): env, steady (8,192 items over 512 files, start-up apart, vs the model-only rate),
host_scaling (decode + preprocess with the model removed at 1/4/8/14 workers), precision_vith (fp32 with/without
TF32, fp16, bf16 at ViT-H/14: speed and |Δscore|), draft_offload, draft_lowmem, serve (needs Ray: skipped with the
reason where it is missing), explain. The rest on request (--parts), measured on the H200 already:
env (versions, GPU, measured bf16 matmul TFLOP/s), parity (fp32 GPU vs CPU scores, tiny fixtures), decode (nvjpeg
+ torch preprocessing vs PIL), precision (fp16/bf16 vs fp32 incl. ranking flips, mid-size fixture), sdpa (which
attention kernels run in half precision), bench_score (ViT-H/14 throughput), draft_sd3 / draft_flux (DRaFT-K at
1024², memory vs the estimator), draft_offload (SD3.5-Large 1024², K=3, offload_frozen: the 24 GB recipe),
draft_lowmem (the same with 8-bit AdamW + VAE tiling), explain (cost of word contributions, occlusion and
attention relevance at ViT-H/14 with deletion/insertion AUCs and the fused vs explicit attention gap),
bench_compile (torch.compile at ViT-H/14; only when named in --parts).
Output: DIR/report.json, DIR/report.md, DIR/log.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMPT = "a tiny dragon taking a bath in a teacup"
# part -> (time limit on a GPU in s, time limit in the dry run); the default run (DEFAULT_PARTS, in this order) answers
# issue 23's questions within the 470 s budget: env, steady (q1), host_scaling (q2), precision_vith (q3),
# draft_offload + draft_lowmem (q4), serve (q5, needs Ray), explain (what budget is left)
PARTS = {
    "env": (30, 60),
    "steady": (110, 120),
    "host_scaling": (60, 120),
    "precision_vith": (80, 120),
    "draft_offload": (90, 240),
    "draft_lowmem": (90, 240),
    "serve": (60, 240),
    "explain": (90, 180),
    # measured on the H200 (bench/results/h200-2026-11-28, docs/benchmarks.md): run when named in --parts
    "parity": (60, 120),
    "decode": (60, 120),
    "precision": (90, 120),
    "sdpa": (60, 120),
    "bench_score": (200, 240),
    "draft_sd3": (110, 240),
    "draft_flux": (110, 240),
    "bench_compile": (150, 240),
}
DEFAULT_PARTS = ["env", "steady", "host_scaling", "precision_vith", "draft_offload", "draft_lowmem", "serve", "explain"]
#: why the serve part cannot run where Ray is missing (the GPU machine's image has none)
RAY_MISSING = (
    "skipped: Ray is not installed on this machine; its cp312 manylinux wheel (ray 2.60.0, 75.6 MiB) is larger than "
    "the 64 MiB the device carries, so `icthp serve` and `--engine ray` cannot be measured here"
)


# ---------------------------------------------------------------------------------------------------- helpers
def _device(dry: bool) -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and not dry else "cpu"


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def pairwise_flips(ref, other, groups=None, tie: float = 0.0) -> dict:
    """Fraction of image pairs (within each group, e.g. one prompt) whose order differs between two score lists.

    Pairs whose reference scores differ by <= `tie` are not counted (ties)."""
    import numpy as np

    ref, other = np.asarray(ref, dtype=np.float64), np.asarray(other, dtype=np.float64)
    groups = np.zeros(len(ref), dtype=int) if groups is None else np.asarray(groups)
    flips = pairs = 0
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        a, b = ref[idx], other[idx]
        da, db = a[:, None] - a[None, :], b[:, None] - b[None, :]
        upper = np.triu(np.ones_like(da, dtype=bool), 1) & (np.abs(da) > tie)
        pairs += int(upper.sum())
        flips += int((upper & (np.sign(da) != np.sign(db))).sum())
    return {"pairs": pairs, "flips": flips, "flip_rate": flips / pairs if pairs else 0.0}


def _spearman(a, b) -> float:
    import numpy as np

    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _tiny_models(root: Path, device: str, dtype: str = "fp32", config=None, seed: int = 0) -> dict:
    """ICT, HP and the CLIP-family baselines (clip, pickscore, hpsv2, aesthetic) as random models of one size."""
    from icthp_core.checkpoints.loading import load_clip
    from icthp_core.scoring.models import HPModel, ICTModel, ImageHeadModel, TextImageModel
    from icthp_core.testing import save_tiny_clip, tiny_head
    from icthp_core.testing.tiny import TINY_CLIP

    cfg = config or TINY_CLIP
    dirs = {}
    for i, name in enumerate(("ict", "hp/hp_backbone", "clip", "pickscore", "hpsv2", "aesthetic")):
        d = root / name
        if not (d / "pytorch_model.bin").exists():
            save_tiny_clip(d, seed=seed + i, config=cfg, with_position_ids=False)
        dirs[name] = d
    head_file = root / "hp" / "hp_scorer" / "mlp_pytorch_model.bin"
    if not head_file.exists():
        from icthp_core.checkpoints.files import save_state_dict

        save_state_dict(tiny_head(cfg["projection_dim"], seed=seed + 100).state_dict(), head_file)
    kw = {"device": device, "dtype": dtype}
    aest_head = tiny_head(cfg["projection_dim"], seed=seed + 101)
    aest = load_clip(dirs["aesthetic"], vision_only=True, **kw)
    return {
        "ict": ICTModel.from_pretrained(dirs["ict"], **kw),
        "hp": HPModel.from_pretrained(root / "hp", **kw),
        "clip": TextImageModel(load_clip(dirs["clip"], **kw)),
        "pickscore": TextImageModel(load_clip(dirs["pickscore"], **kw), logit_scaled=True),
        "hpsv2": TextImageModel(load_clip(dirs["hpsv2"], **kw), preprocess_mode="letterbox"),
        "aesthetic": ImageHeadModel(
            aest, aest_head.to(aest.conv1.weight.device, aest.conv1.weight.dtype), normalize=True, sigmoid=False
        ),
    }


METRICS = ["ict", "hp", "ict_hp", "clip", "pickscore", "hpsv2", "aesthetic"]


def _synthetic_images(n: int, size: int = 96, seed: int = 0) -> tuple[list, list[str], list[int]]:
    """Coloured shapes at several quality levels; one prompt per (colour, shape) group."""
    import random

    from icthp_core.testing.synthetic import COLORS, SHAPES, render

    rng = random.Random(seed)
    groups = [(c, s) for c in COLORS for s in SHAPES]
    imgs, prompts, gid = [], [], []
    for i in range(n):
        g = i % len(groups)
        c, s = groups[g]
        imgs.append(render(c, s, 1 + 2 * rng.random(), size=size, seed=rng.randrange(10**6)))
        prompts.append(f"a {c} {s}")
        gid.append(g)
    return imgs, prompts, gid


def _write_jpegs(folder: Path, n: int, sizes, seed: int = 0, pngs: int = 0) -> list[str]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n + pngs):
        w, h = sizes[i % len(sizes)]
        small = rng.integers(0, 256, (max(h // 32, 2), max(w // 32, 2), 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        p = folder / (f"{i:04d}.jpg" if i < n else f"{i:04d}.png")
        img.save(p, quality=90) if i < n else img.save(p)
        paths.append(str(p))
    return paths


# ---------------------------------------------------------------------------------------------------- parts
def part_env(dry: bool, work: Path) -> dict:
    import torch

    from icthp_core.scoring.cpu import cpu_features

    res: dict = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_features": cpu_features(),
    }
    for mod in ("torchvision", "transformers", "open_clip", "diffusers", "ftfy", "peft", "accelerate"):
        try:
            res[mod] = __import__(mod).__version__
        except Exception as e:  # report, do not fail: later parts say what they miss
            res[mod] = f"missing ({type(e).__name__})"
    device = _device(dry)
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        res.update(gpu=p.name, sm_count=p.multi_processor_count, gpu_mem_gib=round(p.total_memory / 2**30, 1))
        try:
            res["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem,power.limit", "--format=csv"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
        except Exception as e:
            res["nvidia_smi"] = str(e)
    n = 8192 if device == "cuda" else 256
    dt = torch.bfloat16
    a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
    for _ in range(3):
        a @ b
    _sync(device)
    reps = 10 if device == "cuda" else 2
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    res["bf16_matmul_tflops"] = round(2 * n**3 * reps / (time.perf_counter() - t) / 1e12, 3)
    res["matmul_n"] = n
    return res


def part_parity(dry: bool, work: Path) -> dict:
    """fp32 scores on the GPU vs the CPU, same tiny random models, same images (TF32 off)."""
    import torch

    from icthp_core.scoring.scorer import MultiScorer

    device = _device(dry)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    imgs, prompts, _ = _synthetic_images(8 if dry else 64)
    ref = MultiScorer(METRICS, device="cpu", models=_tiny_models(work / "tiny", "cpu")).score(imgs, prompts)
    other_dev = device if device == "cuda" else "cpu"
    got = MultiScorer(METRICS, device=other_dev, models=_tiny_models(work / "tiny", other_dev)).score(imgs, prompts)
    out = {"device": other_dev, "images": len(imgs), "metrics": {}}
    ok = True
    for m in METRICS:
        d = (got[m] - ref[m]).abs()
        scale = float(ref[m].abs().max().clamp_min(1.0))
        rel = float(d.max()) / scale
        out["metrics"][m] = {"max_abs": float(d.max()), "max_rel_to_range": rel}
        ok &= rel <= 1e-4
    out["tolerance"] = "max |gpu - cpu| / max(1, max |cpu|) <= 1e-4 (fp32, TF32 off)"
    out["ok"] = ok
    return out


def part_decode(dry: bool, work: Path) -> dict:
    """GPU decode (nvjpeg) + torch preprocessing vs the PIL path: pixels, scores, throughput, bad-file handling."""
    import torch

    from icthp_core.data.batch import iter_file_batches
    from icthp_core.data.preprocess import OPENAI_STD
    from icthp_core.scoring.gpu_preprocess import DECODE_TOLERANCE, iter_gpu_batches
    from icthp_core.scoring.scorer import MultiScorer

    device = _device(dry)
    sizes = [(1024, 1024), (768, 1024), (1024, 576), (512, 512), (640, 480)]
    n = 10 if dry else 128
    paths = _write_jpegs(work / "decode", n, sizes, seed=1, pngs=2)
    bad = work / "decode" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    items = [(p, PROMPT) for p in paths] + [(str(bad), PROMPT)]
    modes = ["crop", "letterbox"]
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)

    def collect(batches):
        rows, pix = [], {m: [] for m in modes}
        for b in batches:
            rows += b["rows"]
            for m in modes:
                if m in b["pixels"]:
                    pix[m].append(b["pixels"][m].float().cpu())
        return rows, {m: torch.cat(v) for m, v in pix.items()}

    rows_c, pil = collect(iter_file_batches(items, modes, 16, 0))
    rows_g, gpu = collect(iter_gpu_batches(items, modes, device, 16, 0))
    out: dict = {"device": device, "images": len(items), "errors_pil": [], "errors_gpu": []}
    out["errors_pil"] = [r["image"] for r in rows_c if r["error"]]
    out["errors_gpu"] = [r["image"] for r in rows_g if r["error"]]
    for m in modes:
        d = ((gpu[m] - pil[m]) * std).abs()  # back to [0, 1] pixel units
        out[f"{m}_pixel_mean_abs_x255"] = round(float(d.mean()) * 255, 3)
        out[f"{m}_pixel_max_abs_x255"] = round(float(d.max()) * 255, 3)
    scorer = MultiScorer(METRICS, device=device, models=_tiny_models(work / "tiny", device))
    ps = [PROMPT] * pil["crop"].shape[0]
    s_pil = scorer.score_pixels({m: pil[m] for m in modes}, ps)
    s_gpu = scorer.score_pixels({m: gpu[m] for m in modes}, ps)
    out["score_max_abs"] = {m: float((s_pil[m] - s_gpu[m]).abs().max()) for m in METRICS}
    # throughput of decode + preprocess alone, 1024² JPEGs, crop mode
    big = _write_jpegs(work / "decode_big", 2 if dry else 256, [(1024, 1024)], seed=2)  # dry: the code runs
    big_items = [(p, PROMPT) for p in big]
    for name, fn in (
        ("pil_1proc", lambda: iter_file_batches(big_items, ["crop"], 64, 0)),
        ("gpu", lambda: iter_gpu_batches(big_items, ["crop"], device, 64, 0)),
    ):
        list(fn())
        _sync(device)
        t = time.perf_counter()
        list(fn())
        _sync(device)
        out[f"img_per_s_{name}"] = round(len(big) / (time.perf_counter() - t), 1)
    mean_ok = all(out[f"{m}_pixel_mean_abs_x255"] / 255 <= DECODE_TOLERANCE["pixel_mean_abs"] for m in modes)
    max_ok = all(out[f"{m}_pixel_max_abs_x255"] / 255 <= DECODE_TOLERANCE["pixel_max_abs"] for m in modes)
    out["tolerance"] = {k: round(v * 255, 2) for k, v in DECODE_TOLERANCE.items()}
    out["ok"] = bool(mean_ok and max_ok and out["errors_gpu"] == [str(bad)] and out["errors_pil"] == [str(bad)])
    return out


def part_precision(dry: bool, work: Path) -> dict:
    """fp16 / bf16 vs fp32 on the same models and images: max |Δ|, Spearman, pairwise ranking flips per prompt."""
    from icthp_core.scoring.scorer import MultiScorer

    device = _device(dry)
    sys.path.insert(0, str(HERE))
    from bench_score import CONFIGS

    cfg = None if dry else CONFIGS["small"]  # dry: tiny; GPU: the mid (ViT-B/16-sized) pair
    imgs, prompts, groups = _synthetic_images(24 if dry else 384, size=128)
    res: dict = {"device": device, "config": "tiny" if dry else "small (ViT-B/16 towers)", "images": len(imgs)}
    scores = {}
    from icthp_core.dtypes import DTYPE_CHOICES

    dtypes = ["fp32", "bf16"] if dry else list(DTYPE_CHOICES)
    for dt in dtypes:
        models = _tiny_models(work / ("tiny" if dry else "mid"), device, dt, config=cfg)
        scorer = MultiScorer(METRICS, device=device, dtype=dt, models=models)
        scores[dt] = {m: v.numpy() for m, v in scorer.score(imgs, prompts, batch_size=64).items()}
        del scorer, models
    for dt in dtypes[1:]:
        res[dt] = {}
        for m in METRICS:
            a, b = scores["fp32"][m], scores[dt][m]
            spread = float(a.std()) or 1.0
            res[dt][m] = {
                "max_abs": float(abs(a - b).max()),
                "max_abs_over_std": float(abs(a - b).max()) / spread,
                "spearman": _spearman(a, b),
                "flips_per_prompt": pairwise_flips(a, b, groups),
                "flips_all_pairs": pairwise_flips(a, b),
            }
    res["note"] = "random weights: score spreads are smaller than with trained models, so flips are pessimistic"
    return res


def _noise(ref, other, groups) -> dict:
    """|Δscore| of `other` against `ref` (median, p99, max) and the ranking flips within each prompt."""
    import numpy as np

    d = np.abs(np.asarray(other, dtype=np.float64) - np.asarray(ref, dtype=np.float64))
    return {
        "abs_delta_median": float(np.median(d)),
        "abs_delta_p99": float(np.quantile(d, 0.99)),
        "abs_delta_max": float(d.max()),
        "flips_per_prompt": pairwise_flips(ref, other, groups)["flip_rate"],
    }


def _spread(ref, groups) -> dict:
    """The score spread within a prompt (the differences a ranking has to resolve): median range and std."""
    import numpy as np

    ref, groups = np.asarray(ref, dtype=np.float64), np.asarray(groups)
    per = [ref[groups == g] for g in np.unique(groups)]
    return {
        "range_median": float(np.median([np.ptp(v) for v in per])),
        "std_median": float(np.median([v.std() for v in per])),
    }


def part_precision_vith(dry: bool, work: Path) -> dict:
    """q3 at ViT-H/14 size (random weights, the bench_score fixture): model-only images/s at fp32 without and with
    TF32, fp16 and bf16 (batch 64), and |Δscore| of each against fp32 (median, p99, max) next to the spread of the
    fp32 scores within a prompt. Dry run: tiny towers on the CPU."""
    import torch

    from icthp_core import load_scorer

    sys.path.insert(0, str(HERE))
    from bench_score import _model_only, make_fixture

    device = _device(dry)
    root = work / ("score_fixture_tiny" if dry else "score_fixture")
    make_fixture(root, "tiny" if dry else "vit-h", 0)
    imgs, prompts, groups = _synthetic_images(24 if dry else 256, size=96 if dry else 256)
    batch, reps = (4, 1) if dry else (64, 4)
    if dry:
        torch.set_num_threads(1)  # tiny ops: the thread pool costs more than it gives on a shared CPU
    variants = [("fp32", "fp32", False), ("fp32_tf32", "fp32", True), ("fp16", "fp16", False), ("bf16", "bf16", False)]
    res: dict = {"device": device, "config": "tiny" if dry else "vit-h", "images": len(imgs), "batch": batch}
    res["prompts"] = len(set(groups))
    scores, scorer, loaded = {}, None, None
    for name, dtype, tf32 in variants:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        if loaded != dtype:
            del scorer
            if device == "cuda":
                torch.cuda.empty_cache()
            scorer, loaded = load_scorer(root / "ICT", root / "HP", device=device, dtype=dtype), dtype
        ips = _model_only(scorer, batch, device, reps)
        scores[name] = {m: v.numpy() for m, v in scorer.score(imgs, prompts, batch_size=batch).items()}
        res[name] = {"model_img_per_s": ips}
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = scores["fp32"]
    res["spread_fp32"] = {m: _spread(v, groups) for m, v in ref.items()}
    for name, _, _ in variants[1:]:
        res[name]["vs_fp32"] = {m: _noise(ref[m], scores[name][m], groups) for m in ref}
    res["note"] = "random weights: spreads within a prompt are narrower than with trained models, flips pessimistic"
    return res


def part_sdpa(dry: bool, work: Path) -> dict:
    """Which attention kernels the image and text towers run in half precision (profiler kernel names)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from icthp_core.checkpoints.config import VIT_H_14
    from icthp_core.checkpoints.loading import build_clip
    from icthp_core.testing.tiny import TINY_CLIP

    device = _device(dry)
    cfg = TINY_CLIP if dry else VIT_H_14
    res: dict = {"device": device}
    for dt in (torch.bfloat16, torch.float16) if device == "cuda" else (torch.bfloat16,):
        clip = build_clip(cfg).to_empty(device=device).to(dt).eval()
        with torch.no_grad():
            for p in clip.parameters():
                p.normal_(0, 0.02)
        ctx = clip.positional_embedding.shape[0]
        clip.attn_mask = torch.full((ctx, ctx), float("-inf"), device=device).triu_(1)
        x = torch.randn(8, 3, 224, 224, device=device, dtype=dt)
        tok = torch.randint(0, 49407, (8, 77), device=device)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with torch.inference_mode():
            clip.encode_image(x)
            clip.encode_text(tok)
            with profile(activities=acts) as prof:
                clip.encode_image(x)
                clip.encode_text(tok)
                _sync(device)
        names = sorted({e.key for e in prof.key_averages()})
        attn = [
            n for n in names if re.search(r"flash|fmha|efficient_attention|cudnn.*attention|sdpa|scaled_dot", n, re.I)
        ]
        mha = [n for n in names if re.search(r"multi_head_attention|softmax|bmm|baddbmm", n, re.I)]
        key = str(dt).removeprefix("torch.")
        res[key] = {"attention_ops": attn[:20], "other_attention_related_ops": mha[:20]}
        res[key]["fused"] = any(re.search(r"flash|fmha|efficient|cudnn", n, re.I) for n in attn)
        del clip
    return res


def _run_script(cmd: list[str], timeout: float, log) -> tuple[int, str]:
    """Run a benchmark script, streaming its output into the log; returns (rc, output)."""
    import threading

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env, start_new_session=True
    )
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        try:
            os.killpg(proc.pid, 9)  # the part and the processes it started (DataLoader workers, children)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            log.write(line)
            log.flush()
        rc = proc.wait()
    finally:
        timer.cancel()
    return (124 if killed.is_set() else rc), "".join(lines)


def part_bench_score(dry: bool, work: Path, log=None, timeout: float = 200, compile_only: bool = False) -> dict:
    out_json = work / ("bench_compile.json" if compile_only else "bench_score.json")
    if dry:
        args = ["--config", "tiny", "--device", "cpu", "--images", "8", "--upstream-images", "4", "--workers", "0"]
        args += ["--batch-sizes", "4", "--decodes", "cpu", "--breakdown"]
    else:
        args = ["--config", "vit-h", "--device", "cuda", "--dtype", "bf16", "--images", "512"]
        args += ["--upstream-images", "48"]
        if compile_only:
            args += ["--batch-sizes", "128", "--decodes", "gpu", "--compile-batches", "128", "--no-upstream"]
        else:
            args += ["--batch-sizes", "1", "8", "32", "64", "128", "--decodes", "cpu", "gpu", "--breakdown"]
    if compile_only and dry:
        args += ["--no-upstream"]
    cmd = [sys.executable, str(HERE / "bench_score.py"), *args, "--root", str(work / "score_fixture")]
    cmd += ["--json", str(out_json)]
    rc, text = _run_script(cmd, timeout, log or sys.stdout)
    res: dict = {"command": " ".join(["python", "bench/bench_score.py", *args]), "rc": rc}
    if out_json.exists():
        res.update(json.loads(out_json.read_text()))
    else:  # timed out or failed: keep the rows printed so far
        res["ours"] = [json.loads(line[4:]) for line in text.splitlines() if line.startswith("ROW ")]
        res["error"] = "timed out" if rc == 124 else f"rc {rc}: " + text[-1500:]
    return res


def _script_part(script: str, args: list[str], out_json: Path | None, timeout: float, log) -> dict:
    """Run bench/<script> with `args` (plus --json out_json when given); its JSON result, or the error."""
    cmd = [sys.executable, str(HERE / script), *args] + (["--json", str(out_json)] if out_json else [])
    rc, text = _run_script(cmd, timeout, log or sys.stdout)
    res: dict = {"command": " ".join(["python", f"bench/{script}", *args]), "rc": rc}
    if out_json and out_json.exists():
        res.update(json.loads(out_json.read_text()))
    elif out_json is None and rc == 0 and "\n{" in text:  # bench_scale.py prints its JSON last
        res.update(json.loads(text[text.rindex("\n{") + 1 :]))
    else:
        res["error"] = "timed out" if rc == 124 else f"rc {rc}: " + text[-1500:]
    return res


def part_steady(dry: bool, work: Path, log=None, timeout: float = 110) -> dict:
    """q1: steady-state scoring, 8,192 items cycled over the 512 files, start-up (until the first batch) apart."""
    if dry:
        args = ["--config", "tiny", "--device", "cpu", "--images", "8", "--items", "24", "--workers", "0"]
        args += ["--batch-sizes", "4", "--decodes", "cpu"]
    else:
        args = ["--config", "vit-h", "--device", "cuda", "--dtype", "bf16", "--images", "512", "--items", "8192"]
        args += ["--batch-sizes", "64", "--decodes", "gpu", "cpu"]
    args += ["--no-upstream", "--root", str(work / "score_fixture")]
    return _script_part("bench_score.py", args, work / "steady.json", timeout, log)


def part_host_scaling(dry: bool, work: Path, log=None, timeout: float = 60) -> dict:
    """q2: the host pipeline with the model removed at 1, 4, 8, 14 workers (dry: 0, 1)."""
    workers = ["0", "1"] if dry else ["1", "4", "8", "14"]
    args = ["--host-scaling", *workers, "--images", "8" if dry else "512", "--batch-sizes", "4" if dry else "64"]
    args += ["--root", str(work / "score_fixture")]
    return _script_part("bench_score.py", args, work / "host_scaling.json", timeout, log)


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def part_serve(dry: bool, work: Path, log=None, timeout: float = 60) -> dict:
    """q5: `icthp serve` (dynamic batching vs one request at a time) and `--engine ray` vs local, ViT-H on the GPU.
    Skipped with RAY_MISSING where Ray is not installed."""
    if not ray_available():
        return {"rc": 0, "status": "skipped", "error": RAY_MISSING}
    if dry:
        args = ["--config", "tiny", "--images", "16", "--actors", "1", "--requests", "8", "--clients", "4"]
    else:
        args = ["--config", "vit-h", "--device", "cuda", "--images", "1024", "--actors", "1", "--batch-size", "64"]
        args += ["--shard-size", "256", "--workers", "8", "--requests", "256", "--clients", "32"]
        args += ["--max-batch-size", "32"]
    return _script_part("bench_scale.py", args, None, timeout, log)


#: the draft parts: (arch, K values, extra bench_draft.py options)
DRAFT_PARTS = {
    "draft_sd3": ("sd3", "1,3", []),
    "draft_flux": ("flux", "1,3", []),
    "draft_offload": ("sd3", "3", ["--offload-frozen"]),  # the 24 GB recipe for SD3.5-Large
    "draft_lowmem": ("sd3", "3", ["--optimizer", "adamw8bit", "--vae-tiling"]),  # the other low-memory options
}


def part_draft(name: str, dry: bool, work: Path, log=None, timeout: float = 110) -> dict:
    arch, ks, extra = DRAFT_PARTS[name]
    out_json = work / f"{name}.json"
    if dry:
        args = ["--tiny", "--arch", arch, "--sizes", "32", "--ks", "1", "--batches", "1", "--iters", "1", *extra]
    else:
        args = ["--arch", arch, "--sizes", "1024", "--ks", ks, "--batches", "1", "--iters", "2", "--warmup", "1"]
        args += extra
    cmd = [sys.executable, str(HERE / "bench_draft.py"), *args, "--json", str(out_json)]
    rc, text = _run_script(cmd, timeout, log or sys.stdout)
    res: dict = {"command": " ".join(["python", "bench/bench_draft.py", *args]), "rc": rc}
    if out_json.exists():
        res.update(json.loads(out_json.read_text()))
    else:
        res["rows"] = [json.loads(line) for line in text.splitlines() if line.startswith('{"arch"')]
        res["error"] = "timed out" if rc == 124 else f"rc {rc}: " + text[-1500:]
    return res


# ---------------------------------------------------------------------------------------------------- driver
def run_part(name: str, dry: bool, work: Path, timeout: float, log) -> dict:
    """Run one part in a fresh process (isolates CUDA state, memory and crashes) with a time limit."""
    if name in ("bench_score", "bench_compile", *DRAFT_PARTS, *SCRIPT_PARTS):
        t0 = time.time()
        try:
            if name in DRAFT_PARTS:
                res = part_draft(name, dry, work, log, timeout)
            elif name in SCRIPT_PARTS:
                res = SCRIPT_PARTS[name](dry, work, log, timeout)
            else:
                res = part_bench_score(dry, work, log, timeout, compile_only=name == "bench_compile")
            if res.get("status") != "skipped":
                res["status"] = "ok" if res.get("rc") == 0 else ("timeout" if res.get("rc") == 124 else "failed")
        except Exception as e:
            res = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        res["seconds"] = round(time.time() - t0, 1)
        return res
    result_file = work / f"{name}.result.json"
    cmd = [sys.executable, __file__, "--part", name, "--work", str(work), "--out", str(work)]
    if dry:
        cmd.append("--dry-run")
    t0 = time.time()
    rc, text = _run_script(cmd, timeout, log)
    if rc == 0 and result_file.exists():
        res = json.loads(result_file.read_text())
        res.setdefault("status", "ok")
    else:
        res = {"status": "timeout" if rc == 124 else "failed", "error": text[-2000:]}
    res["seconds"] = round(time.time() - t0, 1)
    return res


def part_explain(dry: bool, work: Path) -> dict:
    """bench/bench_explain.py on one picture: ViT-H/14 ICT-HP (random weights) on the GPU, 14 x 14 occlusion grid;
    tiny models on the CPU in the dry run."""
    sys.path.insert(0, str(HERE))
    import bench_explain

    device = _device(dry)
    args = ["--config", "tiny" if dry else "vit-h", "--device", device, "--images", "1"]
    args += ["--grid", "4", "--curve-steps", "4", "--random", "1", "--ig-steps", "8"] if dry else ["--grid", "14"]
    res = bench_explain.main([*args, "--out", str(work / "explain.json")])
    return {"command": res["command"], "device": device, "summary": res["summary"]}


SCRIPT_PARTS = {"steady": part_steady, "host_scaling": part_host_scaling, "serve": part_serve}
PART_FUNCS = {
    "precision_vith": part_precision_vith,
    "explain": part_explain,
    "env": part_env,
    "parity": part_parity,
    "decode": part_decode,
    "precision": part_precision,
    "sdpa": part_sdpa,
}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _md_steady(st: dict) -> list[str]:
    if not st.get("ours"):
        return []
    lines = ["", "## steady", "", f"`{st.get('command')}`", ""]
    lines += [f"{st.get('items')} items over {st.get('images')} files", ""]
    lines += ["| batch | decode | start-up s | steady img/s | model img/s | steady / model | overall img/s |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for r in st["ours"]:
        if "error" in r:
            lines.append(f"| {r['batch']} | {r['decode']} | error: {r['error'][:100]} |")
            continue
        lines.append(
            f"| {r['batch']} | {r['decode']} | {r['startup_s']:.2f} | {r['steady_img_per_s']:.1f} | "
            f"{r['model_img_per_s']:.1f} | {r['steady_vs_model']:.2f} | {r['img_per_s']:.1f} |"
        )
    return lines


def _md_host(hs: dict) -> list[str]:
    if not hs.get("rows"):
        return []
    one = hs["one_core"]
    lines = ["", "## host_scaling", "", f"`{hs.get('command')}`", ""]
    lines += [
        f"One core in process: {one['img_per_s']:.1f} img/s (decode {one['decode_ms']:.1f} ms + preprocess "
        f"{one['preprocess_ms']:.1f} ms per image); {hs['images']} files, batch {hs['batch']}, "
        f"{hs['prefetch_per_worker']} pieces ahead per worker, {hs.get('cpu_count')} cores",
        "",
        "| workers | items per worker task | start-up s | steady img/s | per worker img/s | per worker / one core |",
        "|---|---|---|---|---|---|",
    ]
    for r in hs["rows"]:
        lines.append(
            f"| {r['workers']} | {r['piece']} | {r['startup_s']:.2f} | {r['steady_img_per_s']:.1f} | "
            f"{r['per_worker_img_per_s']:.1f} | {r['per_worker_vs_one_core']:.2f} |"
        )
    for key, label in (("one_worker_per_batch", "one worker per batch (old split)"), ("ipc_only", "IPC only")):
        if key in hs:
            r = hs[key]
            lines.append(
                f"| {r['workers']}, {label} | {r['piece']} | {r['startup_s']:.2f} | {r['steady_img_per_s']:.1f} | | |"
            )
    return lines


def _md_precision_vith(pv: dict) -> list[str]:
    if "fp32" not in pv:
        return []
    lines = ["", f"## precision_vith ({pv['config']}, {pv['images']} images, {pv['prompts']} prompts)", ""]
    lines += ["| dtype | model img/s | metric | median abs d | p99 abs d | max abs d | flips per prompt |"]
    lines += ["|---|---|---|---|---|---|---|", f"| fp32 | {pv['fp32']['model_img_per_s']:.1f} | | | | | |"]
    for name in ("fp32_tf32", "fp16", "bf16"):
        for m, d in pv[name]["vs_fp32"].items():
            lines.append(
                f"| {name} | {pv[name]['model_img_per_s']:.1f} | {m} | {d['abs_delta_median']:.2e} | "
                f"{d['abs_delta_p99']:.2e} | {d['abs_delta_max']:.2e} | {d['flips_per_prompt']:.4f} |"
            )
    lines += ["", "Spread of the fp32 scores within a prompt (median over prompts):", ""]
    lines += [f"- {m}: range {v['range_median']:.3e}, std {v['std_median']:.3e}" for m, v in pv["spread_fp32"].items()]
    return lines


def _precision_section(report: dict) -> list[str]:
    """fp16/bf16 vs fp32 tables and the SDPA kernels."""
    lines: list[str] = []
    pre = report["parts"].get("precision", {})
    for dt in ("fp16", "bf16"):
        if dt in pre:
            lines += ["", f"## {dt} vs fp32 ({pre.get('config')}, {pre.get('images')} images)", ""]
            lines += ["| metric | max abs | max abs / std | Spearman | flips per prompt | flips all pairs |"]
            lines += ["|---|---|---|---|---|---|"]
            for m, r in pre[dt].items():
                lines.append(
                    f"| {m} | {r['max_abs']:.2e} | {r['max_abs_over_std']:.3f} | {r['spearman']:.4f} | "
                    f"{r['flips_per_prompt']['flip_rate']:.4f} | {r['flips_all_pairs']['flip_rate']:.4f} |"
                )
    sd = report["parts"].get("sdpa", {})
    for dt in ("bfloat16", "float16"):
        if dt in sd:
            lines += ["", f"SDPA {dt}: fused={sd[dt]['fused']}; attention ops: {', '.join(sd[dt]['attention_ops'])}"]
    return lines


def _score_section(name: str, report: dict) -> list[str]:
    """The bench_score / bench_compile table of a report (none when the part has no rows)."""
    lines: list[str] = []
    bs = report["parts"].get(name, {})
    if bs.get("ours"):
        up = bs.get("upstream") or {}
        peak = bs.get("peak_tflops", 790.0)
        lines += ["", f"## {name}", "", f"`{bs.get('command')}`", ""]
        if up:
            lines.append(f"Upstream-style loop: {up['img_per_s']:.2f} img/s, peak {up['peak_gib']:.2f} GiB")
            lines.append("")
        lines += [
            "| batch | decode | compile | img/s | model img/s | peak GiB | × upstream | mem ratio | %peak e2e "
            "| %peak model |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in bs["ours"]:
            if "error" in r:
                lines.append(f"| {r['batch']} | {r['decode']} | {r['compile']} | error: {r['error'][:100]} |")
                continue
            tf = r["flops_per_img"] / (peak * 1e12)
            sp = r["img_per_s"] / up["img_per_s"] if up else float("nan")
            mr = r["peak_gib"] / up["peak_gib"] if up else float("nan")
            lines.append(
                f"| {r['batch']} | {r['decode']} | {r['compile']} | {r['img_per_s']:.1f} | "
                f"{r['model_img_per_s']:.1f} | {r['peak_gib']:.2f} | {sp:.1f} | {mr:.2f} | "
                f"{100 * tf * r['img_per_s']:.1f} | {100 * tf * r['model_img_per_s']:.1f} |"
            )
        host = [r for r in bs["ours"] if "prep_img_per_s" in r]
        if host:  # where the end-to-end gap to the model rate comes from
            lines += ["", "Host side alone (no model); overlap = end-to-end / min(host, model):", ""]
            lines += ["| batch | decode | read img/s | decode + preprocess img/s | overlap |"]
            lines += ["|---|---|---|---|---|"]
            for r in host:
                lines.append(
                    f"| {r['batch']} | {r['decode']} | {r['read_img_per_s']:.0f} | {r['prep_img_per_s']:.0f} | "
                    f"{r['overlap']:.2f} |"
                )
        if bs.get("error"):
            lines.append(f"\nerror: {bs['error'][:300]}")
    return lines


def _draft_section(name: str, report: dict) -> list[str]:
    """The bench_draft table of one DRaFT part (and its error)."""
    lines: list[str] = []
    dr = report["parts"].get(name, {})
    if dr.get("rows"):
        lines += ["", f"## {name}", "", f"`{dr.get('command')}`", ""]
        lines += [
            "| model | res | steps | K | batch | optimizer | VAE tiling | offload | s/iter | peak GiB "
            "| estimated GiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in dr["rows"]:
            lines.append(
                f"| {r['model']} | {r['size']} | {r['steps']} | {r['k']} | {r['batch']} | "
                f"{r.get('optimizer', 'adamw')} | {r.get('vae_tiling') or 'off'} | "
                f"{'on' if r.get('offload_frozen') else 'off'} | "
                f"{r.get('sec_per_iter')} | {r.get('peak_gib')} | {r.get('est_gib')} |"
            )
    if dr.get("error"):
        lines.append(f"\n{name} error: {str(dr['error'])[:300]}")
    return lines


def markdown(report: dict) -> str:
    """A readable summary of the report (the JSON holds everything)."""
    env = report["parts"].get("env", {})
    lines = [
        "# GPU check report",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {env.get('gpu', 'CPU (dry run)')}, {env.get('cpu_count')} CPU cores, torch {env.get('torch')}, "
        f"measured bf16 matmul {env.get('bf16_matmul_tflops')} TFLOP/s (n={env.get('matmul_n')})  ",
        f"Total: {report['seconds']} s",
        "",
        "| part | status | seconds |",
        "|---|---|---|",
    ]
    for name, res in report["parts"].items():
        lines.append(f"| {name} | {res.get('status')} | {res.get('seconds')} |")
    par = report["parts"].get("parity", {})
    if par.get("metrics"):
        lines += ["", "## Parity (fp32 GPU vs CPU)", "", "| metric | max abs | max rel |", "|---|---|---|"]
        for m, r in par["metrics"].items():
            lines.append(f"| {m} | {r['max_abs']:.2e} | {r['max_rel_to_range']:.2e} |")
    dec = report["parts"].get("decode", {})
    if "crop_pixel_mean_abs_x255" in dec:
        lines += ["", "## GPU decode vs PIL", ""]
        for k, v in dec.items():
            if k not in ("status", "seconds"):
                lines.append(f"- {k}: {_fmt(v)}")
    lines += _precision_section(report)
    for name in ("bench_score", "bench_compile"):
        lines += _score_section(name, report)
    for name in DRAFT_PARTS:
        lines += _draft_section(name, report)
    lines += _md_steady(report["parts"].get("steady", {})) + _md_host(report["parts"].get("host_scaling", {}))
    lines += _md_precision_vith(report["parts"].get("precision_vith", {}))
    sv = report["parts"].get("serve", {})
    if sv:
        lines += ["", "## serve", "", f"`{sv.get('command', '')}`", ""]
        lines += [str(sv.get("error"))] if sv.get("status") == "skipped" else ["```", json.dumps(sv.get("server"))]
        lines += [] if sv.get("status") == "skipped" else [json.dumps(sv.get("engines")), "```"]
    ex = report["parts"].get("explain", {})
    if ex.get("summary"):
        lines += ["", "## explain", "", f"`{ex.get('command')}`", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in ex["summary"].items()]
    for name, res in report["parts"].items():
        if res.get("status") != "ok" and res.get("error") and name not in DRAFT_PARTS:
            lines += ["", f"### {name} failed", "", "```", str(res["error"])[-1500:], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for report.json, report.md, log.txt")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (seconds)")
    ap.add_argument(
        "--parts",
        default=",".join(DEFAULT_PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} (default: all but bench_compile)",
    )
    ap.add_argument("--budget", type=float, default=470, help="seconds for all parts together (GPU run)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="icthp_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    if a.part:  # child process: one part, result to a file
        res = PART_FUNCS[a.part](a.dry_run, work)
        (work / f"{a.part}.result.json").write_text(json.dumps(res, default=str))
        return res
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"--parts: unknown {unknown}; choose from {list(PARTS)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"command": "python bench/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    report["dry_run"], report["parts"] = a.dry_run, {}
    t_start = time.time()
    with open(out / "log.txt", "w") as log:
        for name in parts:
            left = a.budget - (time.time() - t_start)
            limit = PARTS[name][1 if a.dry_run else 0]
            if not a.dry_run:
                limit = min(limit, left)
            if limit < 15:
                report["parts"][name] = {"status": "skipped", "error": f"budget left {left:.0f}s"}
                continue
            log.write(f"\n===== {name} (limit {limit:.0f}s) =====\n")
            log.flush()
            print(f"[gpu_check] {name} (limit {limit:.0f}s) ...", flush=True)
            res = run_part(name, a.dry_run, work, limit, log)
            report["parts"][name] = res
            print(f"[gpu_check] {name}: {res.get('status')} in {res.get('seconds')}s", flush=True)
            report["seconds"] = round(time.time() - t_start, 1)
            (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    report["seconds"] = round(time.time() - t_start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report)
    (out / "report.md").write_text(md)
    print(md)
    return report


if __name__ == "__main__":
    main()
