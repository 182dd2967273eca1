"""Phase-swapped CPU offload of the frozen parts of DRaFT training (option `offload_frozen`).

One DRaFT step needs the frozen transformer weights while sampling and during the backward, and the VAE and the
reward towers only between the two (decode, reward, gradient to the latents). :class:`FrozenSwap` keeps every frozen
tensor (parameters with ``requires_grad=False`` and buffers) of named groups in (pinned) host memory and makes one
group resident on the device at a time by reassigning ``tensor.data``: the host copy stays (frozen weights never
change), so offloading a group costs no copy, and bringing it back is one host→device copy per tensor. Trainable
parameters (the LoRA, with their gradients and optimizer states) are never touched.

:func:`draft_step_offloaded` runs a DRaFT / ReFL / DRaFT-LV step in three phases with the same LoRA gradients as
``draft_step(...).loss.backward()``:

1. sampling (transformer resident): the no-grad steps and the K differentiated steps, no decode;
2. reward (VAE + reward towers resident): decode ``lat_d = lat.detach()``, reward, reward loss, and
   ``g = ∂ reward_loss / ∂ lat`` by a separate backward through VAE and towers;
3. backward (transformer resident again): of the surrogate ``(lat · g).sum() + kl_weight · kl`` through the
   K steps, whose blocks gradient checkpointing recomputes with the weights now back on the device.

Parameters are saved in autograd graphs by reference, so a graph built in phase 1 follows their ``.data`` back to
the device in phase 3. Without gradient checkpointing the K steps' activations stay alive through phase 2 anyway,
which is why the trainer requires it.

accelerate's ``cpu_offload`` hooks (`accelerate.hooks.AlignDevicesHook`) move weights per submodule forward, which
would copy the transformer once per sampling step and again per recomputed block in the backward; they have no
notion of phases, hence this small module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from icthp_core.diffusion.draft import (
    DraftConfig,
    FlowModel,
    RewardFn,
    StepOutput,
    TextConditioning,
    reward_loss,
    reward_towers,
    sample,
)


def frozen_tensors(modules: Iterable[nn.Module]) -> list[Tensor]:
    """Every distinct frozen parameter (``requires_grad=False``) and buffer of `modules`."""
    seen: set[int] = set()
    out: list[Tensor] = []
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.requires_grad or id(t) in seen:
                continue
            seen.add(id(t))
            out.append(t)
    return out


class FrozenSwap:
    """Named groups of frozen tensors, of which at most one is resident on `device`; the others live on the host.

    `pin` (default: `device` is CUDA) keeps the host copies in page-locked memory so the host→device copies run
    asynchronously at full PCIe speed. The group named `resident` is made resident at construction.
    """

    def __init__(
        self,
        groups: dict[str, Sequence[nn.Module]],
        device: torch.device | str,
        resident: str | None = None,
        pin: bool | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda" if pin is None else pin
        self.tensors = {name: frozen_tensors(mods) for name, mods in groups.items()}
        self.host: dict[str, list[Tensor]] = {}
        self.active: str | None = None
        for name, ts in self.tensors.items():
            self.host[name] = [self._host_copy(t) for t in ts]
            if name == resident and self.device.type != "cpu" and all(self._resident(t) for t in ts):
                self.active = name  # already on the device: keep those copies
                continue
            for t, h in zip(ts, self.host[name], strict=True):
                t.data = h
        if resident is not None:
            self.activate(resident)

    def _resident(self, t: Tensor) -> bool:
        return t.device.type == self.device.type and self.device.index in (None, t.device.index)

    def _host_copy(self, t: Tensor) -> Tensor:
        if t.device.type == "cpu" and (t.is_pinned() or not self.pin):
            return t.detach()
        h = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=self.pin)
        return h.copy_(t.detach())

    def bytes(self, name: str) -> int:
        """Bytes of group `name` (what one activation copies to the device)."""
        return sum(t.numel() * t.element_size() for t in self.host[name])

    def activate(self, name: str | None) -> None:
        """Make group `name` resident (None: none); every other group's tensors point back at their host copies."""
        if name == self.active:
            return
        if name is not None and name not in self.tensors:
            raise KeyError(f"unknown group {name!r}; groups: {sorted(self.tensors)}")
        if self.active is not None:  # free the device copies first (the host copies are still valid)
            for t, h in zip(self.tensors[self.active], self.host[self.active], strict=True):
                t.data = h
        if name is not None:
            for t, h in zip(self.tensors[name], self.host[name], strict=True):
                t.data = torch.empty(h.shape, dtype=h.dtype, device=self.device).copy_(h, non_blocking=self.pin)
        self.active = name

    @contextlib.contextmanager
    def phase(self, name: str | None) -> Iterator[None]:
        """Group `name` resident inside the block, the previously resident group again afterwards."""
        before = self.active
        self.activate(name)
        try:
            yield
        finally:
            self.activate(before)


def draft_swap(model: FlowModel, reward_fn: RewardFn, device) -> FrozenSwap:
    """The two groups of DRaFT training: ``"transformer"`` (its frozen base weights; resident) and ``"decode"``
    (VAE + the reward towers of a `build_reward` reward, `reward_fn.scorer.models`)."""
    towers = reward_towers(reward_fn)
    return FrozenSwap({"transformer": [model.base], "decode": [model.vae, *towers]}, device, resident="transformer")


def draft_step_offloaded(
    model: FlowModel,
    reward_fn: RewardFn,
    prompts: Sequence[str],
    cond: TextConditioning,
    noise: Tensor,
    cfg: DraftConfig,
    swap: FrozenSwap,
    backward: Callable[[Tensor], None] = Tensor.backward,
    grad_scale: float = 1.0,
    rng=None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """`draft_step` + its backward in the three phases of the module docstring (groups of :func:`draft_swap`).

    Runs the backward itself through `backward` (e.g. ``accelerator.backward``) on the surrogate loss; the
    returned `loss` is the true loss value (detached). `grad_scale` multiplies the reward loss before its own
    backward (fp16 loss scaling; `g` is unscaled again before the surrogate goes to `backward`).
    """
    swap.activate("transformer")
    out = sample(model, noise, cond, cfg, rng=rng, generator=generator, decode=False)
    lat = out.latents
    with_grad = lat.requires_grad
    prompts = list(prompts) * out.copies
    with swap.phase("decode"):
        lat_d = lat.detach().requires_grad_(with_grad)
        with torch.set_grad_enabled(with_grad):
            images = model.decode(lat_d)
            rewards = reward_fn(images, prompts)
            if rewards.shape != (images.shape[0],):
                raise ValueError(f"reward_fn must return shape [{images.shape[0]}], got {tuple(rewards.shape)}")
            rl = reward_loss(rewards.float(), cfg.reward_hinge)
        g = torch.autograd.grad(rl * grad_scale, lat_d)[0] / grad_scale if with_grad else None
        images, rewards, rl = images.detach(), rewards.detach(), rl.detach()
    loss = rl if out.kl is None else rl + cfg.kl_weight * out.kl.detach()
    if with_grad:
        surrogate = (lat * g).sum()
        if out.kl is not None:
            surrogate = surrogate + cfg.kl_weight * out.kl
        backward(surrogate)
    kl = None if out.kl is None else out.kl.detach()
    return StepOutput(loss, rewards, kl, images, out.grad_steps)


@torch.no_grad()
def generate_offloaded(model: FlowModel, noise: Tensor, cond: TextConditioning, num_steps: int, swap: FrozenSwap):
    """Plain sampling with the transformer resident; returns the unpacked latents (decode them in the
    ``"decode"`` phase: ``with swap.phase("decode"): model.decode(lat)``)."""
    swap.activate("transformer")
    cfg = DraftConfig(num_steps=num_steps, k=0, variant="draft")
    return sample(model, noise, cond, cfg, decode=False).latents
