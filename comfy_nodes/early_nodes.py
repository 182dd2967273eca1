"""ICTHPEarlyBestOfN: sample N seeds part-way, score the decoded x0 predictions, finish only the best k.

Uses ComfyUI's own sampling API: ``comfy.samplers.KSampler`` gives the sigmas a KSampler would use, and
``comfy.sample.sample_custom`` runs them split at step ``s`` (like KSamplerAdvanced start/end steps): phase 1
runs sigmas[0..s] for all N candidates, phase 2 runs sigmas[s..] without new noise for the k kept. For
deterministic samplers (euler, heun, dpmpp_2m, ...) this is the same computation as one full run, so the kept
images equal a plain KSampler run of their seeds. Candidate ``i`` uses seed ``seed + i`` (batch of one noise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io, ui
from comfy_execution.graph_utils import ExecutionBlocker

from icthp_core.scoring.selection import rank, select_batch, select_mask

from .models import RewardModel, split_prompts
from .reward_nodes import CATEGORY, RewardModelType, metric_options


@dataclass
class EarlyResult:
    images: torch.Tensor  # final images of the kept candidates, best first
    latent: dict  # their final latents
    seeds: list[int]  # the kept candidates' seeds (reproducible with a plain KSampler)
    kept: list[int]  # candidate indices, best first
    preview_scores: list[float]  # score of every candidate's x0 preview (candidate order)
    final_scores: list[float] | None  # scores of the final images (kept order), when asked
    previews: torch.Tensor  # decoded x0 previews of all N candidates (candidate order)
    stop_step: int
    steps: int
    model_steps: int  # candidate-steps run: N * s + k * (steps - s)

    @property
    def full_steps(self) -> int:
        return len(self.preview_scores) * self.steps


def split_step(steps: int, fraction: float) -> int:
    """The step at which candidates are scored: ``round(fraction * steps)`` clamped to ``[1, steps]``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return min(steps, max(1, round(fraction * steps)))


def _candidates(latent: dict, n: int) -> torch.Tensor:
    samples = latent["samples"]
    if samples.shape[0] == 1:
        return samples.repeat(n, *([1] * (samples.ndim - 1)))
    if samples.shape[0] != n:
        raise ValueError(f"LATENT has batch {samples.shape[0]}; give one latent (repeated) or exactly n={n}")
    return samples


@dataclass
class _Sampling:
    """What both phases share: ComfyUI's model, conditioning, sampler and sigmas, and the progress bar."""

    model: object
    positive: object
    negative: object
    cfg: float
    sampler: object
    sigmas: torch.Tensor
    seed: int
    progress: Callable[[int, torch.Tensor], None]

    def sample(self, noise, latent, mask, sigmas, offset: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`sample_custom` over `sigmas` (steps counted from `offset`); (latents, x0 of the last model call)."""
        captured: dict[str, torch.Tensor] = {}

        def callback(step, x0, x, _total):
            captured["x0"] = x0
            self.progress(offset + step + 1, x0)

        out = comfy.sample.sample_custom(
            self.model,
            noise,
            self.cfg,
            self.sampler,
            sigmas,
            self.positive,
            self.negative,
            latent,
            mask,
            callback,
            True,
            self.seed,
        )
        return out, captured.get("x0")


def _setup(model, positive, negative, latent, cfg, sampler_name, scheduler, denoise, steps, seed, n):
    """The sampling context, the N candidate latents, their noises (seed + i each) and seeds."""
    ks = comfy.samplers.KSampler(
        model, steps=steps, device=model.load_device, sampler=sampler_name, scheduler=scheduler, denoise=denoise
    )
    sigmas = ks.sigmas.cpu()
    sampler = comfy.samplers.sampler_object(sampler_name)
    base = comfy.sample.fix_empty_latent_channels(model, _candidates(latent, n))
    seeds = [(seed + i) % 2**64 for i in range(n)]
    noise = torch.cat([comfy.sample.prepare_noise(base[i : i + 1], s_i) for i, s_i in enumerate(seeds)])
    total = max(len(sigmas) - 1, 0)  # denoise=0: no sigmas
    pbar = comfy.utils.ProgressBar(total)
    previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)

    def progress(step: int, x0: torch.Tensor) -> None:
        image = previewer.decode_latent_to_preview_image("JPEG", x0) if previewer else None
        pbar.update_absolute(step, total, image)

    run = _Sampling(model, positive, negative, cfg, sampler, sigmas, seed, progress)
    return run, base, noise, seeds


def _score_previews(
    model, vae, reward: RewardModel, prompt: str, n: int, metric: str, x0: torch.Tensor | None, base: torch.Tensor
):
    """Decode the phase-1 x0 predictions and score them; (previews, scores, prompts, metric). ``x0`` None (nothing
    was sampled: denoise=0): the unchanged candidate latents ``base`` are decoded."""
    if x0 is not None:  # x0 of the last phase-1 model call, in VAE latent space
        base = model.model.process_latent_out(x0.to(torch.float32)).to(mm.intermediate_device())
    previews = vae.decode(base)[..., :3]
    prompts = split_prompts(prompt, n, False, reward.needs_prompt)
    scores = reward.score(previews, prompts)
    metric = reward.primary if metric == "auto" else metric
    if metric not in scores:
        raise ValueError(
            f"metric {metric!r} is not given by the loaded model {reward.name!r} (it gives {sorted(scores)})"
        )
    return previews, scores, prompts, metric


def early_best_of_n(
    model,
    positive,
    negative,
    latent: dict,
    vae,
    reward: RewardModel,
    prompt: str,
    *,
    seed: int,
    n: int,
    k: int,
    steps: int,
    fraction: float,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    denoise: float = 1.0,
    metric: str = "auto",
    score_final: bool = True,
) -> EarlyResult:
    """Run the early best-of-N search (see the module docstring); every input is a ComfyUI value."""
    if n < 1 or k < 1:
        raise ValueError(f"n and k must be >= 1, got n={n}, k={k}")
    k = min(k, n)
    s = split_step(steps, fraction)
    run, base, noise, seeds = _setup(
        model, positive, negative, latent, cfg, sampler_name, scheduler, denoise, steps, seed, n
    )
    mask, total = latent.get("noise_mask"), max(len(run.sigmas) - 1, 0)
    if total == 0:  # denoise=0: nothing to sample (as KSampler: the latent unchanged); the candidates are scored as is
        s, x_s, x0 = 0, base, None
    else:  # phase 1: all N candidates to step s, then their x0 predictions are scored
        x_s, x0 = run.sample(noise, base, mask, run.sigmas[: s + 1], 0)
    previews, scores, prompts, metric = _score_previews(model, vae, reward, prompt, n, metric, x0, base)
    sel = rank(scores[metric], k)
    kept = sel.selected
    x_kept = select_batch(x_s, kept, "LATENT samples")
    mask_kept = select_mask(mask, kept, n, "LATENT noise_mask") if mask is not None else None
    # phase 2: the k kept ones to the end, without new noise
    final = run.sample(torch.zeros_like(x_kept), x_kept, mask_kept, run.sigmas[s:], s)[0] if s < total else x_kept
    images = vae.decode(final)[..., :3]
    final_scores = None
    if score_final:
        final_scores = [float(v) for v in reward.score(images, prompts[:k])[metric]]
    out_latent = {"samples": final}
    if mask_kept is not None:
        out_latent["noise_mask"] = mask_kept
    return EarlyResult(
        images=images,
        latent=out_latent,
        seeds=[seeds[i] for i in kept],
        kept=kept,
        preview_scores=sel.scores,
        final_scores=final_scores,
        previews=previews,
        stop_step=s,
        steps=total,
        model_steps=n * s + k * (total - s),
    )


def summary(res: EarlyResult, metric: str) -> str:
    n = len(res.preview_scores)
    saved = res.full_steps - res.model_steps
    share = saved / max(res.full_steps, 1)
    lines = [
        f"early best-of-{n}: scored x0 at step {res.stop_step}/{res.steps} ({metric}), kept {len(res.kept)}; "
        f"{res.model_steps} of {res.full_steps} candidate-steps run ({saved} saved, {share:.0%})"
    ]
    for rank_i, i in enumerate(res.kept):
        final = f", final {res.final_scores[rank_i]:.4f}" if res.final_scores is not None else ""
        lines.append(f"  kept #{i} seed {res.seeds[rank_i]}: x0 {res.preview_scores[i]:.4f}{final}")
    pruned = [i for i in range(n) if i not in res.kept]
    if pruned:
        lines.append("  pruned: " + ", ".join(f"#{i}={res.preview_scores[i]:.4f}" for i in pruned))
    return "\n".join(lines)


class ICTHPEarlyBestOfN(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ICTHPEarlyBestOfN",
            display_name="ICT-HP Early Best-of-N Sampler",
            category=CATEGORY,
            description="Samples n seeds (seed, seed+1, ...) to a fraction of the steps, scores the decoded x0 "
            "predictions with the reward model, and finishes only the k best. With deterministic samplers the "
            "kept images equal a plain KSampler run of their seeds.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent_image", tooltip="one latent (used for every seed) or a batch of n"),
                io.Vae.Input("vae", tooltip="decodes the x0 previews and the final images"),
                RewardModelType.Input("reward_model"),
                io.String.Input("prompt", multiline=True, default="", tooltip="the prompt the reward compares with"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                io.Int.Input("n", default=8, min=1, max=256, tooltip="candidates (seeds seed .. seed+n-1)"),
                io.Int.Input("k", default=2, min=1, max=256, tooltip="candidates finished"),
                io.Int.Input("steps", default=20, min=1, max=10000),
                io.Float.Input(
                    "fraction",
                    default=0.6,
                    min=0.01,
                    max=1.0,
                    step=0.01,
                    tooltip="share of the steps run before scoring (0.5-0.75 is a good range; see README)",
                ),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler"),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal"),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
                io.Combo.Input("metric", options=metric_options(), default="auto"),
                io.Boolean.Input("score_final", default=True, tooltip="also score the finished images"),
            ],
            outputs=[
                io.Image.Output(display_name="images"),
                io.Latent.Output(display_name="latent"),
                io.Float.Output(display_name="scores", is_output_list=True),
                io.Int.Output(display_name="seeds", is_output_list=True),
                io.Image.Output(display_name="previews"),
                io.Image.Output(display_name="pruned_previews"),
                io.String.Output(display_name="summary"),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        positive,
        negative,
        latent_image,
        vae,
        reward_model: RewardModel,
        prompt,
        seed,
        n,
        k,
        steps,
        fraction,
        cfg,
        sampler_name,
        scheduler,
        denoise=1.0,
        metric="auto",
        score_final=True,
    ) -> io.NodeOutput:
        res = early_best_of_n(
            model,
            positive,
            negative,
            latent_image,
            vae,
            reward_model,
            prompt,
            seed=seed,
            n=n,
            k=k,
            steps=steps,
            fraction=fraction,
            cfg=cfg,
            sampler_name=sampler_name,
            scheduler=scheduler,
            denoise=denoise,
            metric=metric,
            score_final=score_final,
        )
        name = reward_model.primary if metric == "auto" else metric
        text = summary(res, name)
        scores = res.final_scores if res.final_scores is not None else [res.preview_scores[i] for i in res.kept]
        # nothing pruned (k >= n, or n = 1): block the nodes fed by `pruned_previews` silently, as the Best-of-N node
        # does for `rejected_images`, instead of sending them an empty IMAGE batch they cannot handle
        pruned_idx = [i for i in range(n) if i not in res.kept]
        pruned = select_batch(res.previews, pruned_idx) if pruned_idx else ExecutionBlocker(None)
        return io.NodeOutput(
            res.images, res.latent, scores, res.seeds, res.previews, pruned, text, ui=ui.PreviewText(text)
        )
