"""The "Explain" view of the Compare tab: heatmaps per metric and word bars for a picked image, beside the image it
is compared with (the runner-up when the pick is the winner, else the winner). Logic first, Gradio wiring last."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

import numpy as np
from PIL import Image

from icthp_core.data.images import load_image
from icthp_core.explain.api import Explanation, explain
from icthp_core.explain.common import text_metrics
from icthp_core.explain.outputs import overlays

from . import uploads
from .logic import PRIMARY, InputError, label
from .pool import ProgressFn

#: integrated-gradients steps in the app (the CLI default is 32; 16 keeps completeness within 1% on the tests)
IG_STEPS = 16
COST_NOTE = (
    "Cost per image and model: words = one batched text pass (+ integrated gradients); relevance = one "
    "forward + backward; occlusion = grid² + 1 image passes (7 × 7 ≈ 50 on CPU, minutes at ViT-H size)."
)


@dataclass
class ExplainResult:
    status_md: str
    html: str
    explanations: dict[str, list[Explanation]]  # per image name: one Explanation per scorer group


def _png_uri(img: Image.Image, max_side: int = 320) -> str:
    img = img.copy()
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _word_rows(table: dict) -> str:
    words = table["words"]
    top = max((abs(w["removal_drop"] or 0.0) for w in words), default=0.0) or 1.0
    rows = []
    for w in words:
        v = w["removal_drop"] or 0.0
        colour = "#2e9e48" if v >= 0 else "#c8372d"
        ig = "" if w["ig"] is None else f" · IG {w['ig']:+.4f}"
        rows.append(
            f'<div class="icthp-word" data-word="{escape(w["word"])}" data-drop="{v:.6g}" '
            f'style="display:flex;gap:6px;align-items:center;font-size:12px">'
            f'<span style="width:90px;overflow:hidden">{escape(w["word"])}</span>'
            f'<span style="display:inline-block;height:10px;width:{int(120 * abs(v) / top)}px;background:{colour}">'
            f'</span><span style="font-family:monospace">{v:+.4f}{ig}</span>'
            f'<span style="color:#555">{escape(w["reading"])}</span></div>'
        )
    return "".join(rows)


def column_html(name: str, role: str, exs: Sequence[Explanation], metrics: Sequence[str]) -> str:
    """One column: the image's heatmaps per metric and method, then its word bars per prompt metric."""
    parts = [f'<div class="icthp-exp-col" data-name="{escape(name)}" data-role="{role}" style="flex:1;min-width:0">']
    scores = {m: v for ex in exs for m, v in ex.scores.items()}
    head = ", ".join(f"{label(m)} {scores[m]:.4f}" for m in metrics if m in scores)
    parts.append(f"<h4>{escape(role)}: {escape(name)}</h4><div style='font-size:12px'>{escape(head)}</div>")
    figs = []
    for ex in exs:
        for (m, method), img in overlays(ex).items():
            figs.append(
                f'<figure class="icthp-heat" data-metric="{m}" data-method="{method}" style="margin:4px">'
                f'<img src="{_png_uri(img)}" style="width:100%;max-width:300px">'
                f"<figcaption style='font-size:12px'>{escape(label(m))} · {method}</figcaption></figure>"
            )
    parts.append(f'<div style="display:grid;grid-template-columns:repeat(2,1fr);gap:6px">{"".join(figs)}</div>')
    for ex in exs:
        for m, table in ex.words.items():
            parts.append(
                f'<div class="icthp-words" data-metric="{m}"><b style="font-size:12px">{escape(label(m))}: '
                f"score drop when each word is removed</b>{_word_rows(table)}</div>"
            )
        parts += [
            f"<div style='font-size:11px;color:#777'>{escape(k)}: {escape(v)}</div>" for k, v in ex.skipped.items()
        ]
    parts.append("</div>")
    return "".join(parts)


def partner(values: Sequence[float], pick: int) -> tuple[int, str]:
    """The image shown beside the pick: the runner-up when the pick is the winner, else the winner."""
    order = [int(i) for i in np.argsort(-np.asarray(values), kind="stable")]
    if order[0] == pick:
        return order[1], "runner-up"
    return order[0], "winner"


class ExplainPanel:
    """Runs the explanations through the app's shared scorer pool (one lock per model group)."""

    def __init__(self, controller: Any) -> None:
        self.controller = controller
        self.pool = controller.pool

    def choices(self, files: Any) -> list[str]:
        from .controller import _paths

        return uploads.unique_names(_paths(files)) if files else []

    def _explain_one(self, image, prompt: str, metrics: list[str], methods: list[str], grid: int) -> list[Explanation]:
        out = []
        for group in self.pool.groups(metrics):
            wanted = [m for m in group if m in metrics]
            scorer = self.pool.scorer(group)
            with self.pool._lock_for(group):
                out.append(explain(scorer, image, prompt, wanted, methods, grid, IG_STEPS))
        return out

    def run(
        self,
        files: Any,
        prompt: str,
        metrics: Sequence[str],
        pick: str | None,
        methods: Sequence[str],
        grid: int,
        progress: ProgressFn | None = None,
    ) -> ExplainResult:
        from .controller import _paths

        prompt = (prompt or "").strip()
        metrics = [m for m in self.pool.metrics if m in (metrics or [])]
        if not metrics:
            raise InputError("Select at least one metric.")
        if not prompt and any(text_metrics(m) for m in metrics):
            raise InputError("Type the prompt the images were generated for.")
        methods = ["words", *[m for m in methods if m in ("relevance", "occlusion")]]
        paths, _ = uploads.validate_images(_paths(files), self.controller.limits)
        names = uploads.unique_names(paths)
        if pick not in names:
            raise InputError("Pick one of the uploaded images to explain.")
        key = PRIMARY if PRIMARY in metrics else metrics[0]
        scores = self.pool.score(paths, prompt, [key])[key]
        i = names.index(pick)
        j, role = partner(scores, i)
        cols, exs = [], {}
        for k, (idx, r) in enumerate(((i, "picked"), (j, role))):
            if progress:
                progress(k / 2, f"Explaining {names[idx]} …")
            exs[names[idx]] = self._explain_one(load_image(paths[idx]), prompt, metrics, methods, int(grid))
            cols.append(column_html(names[idx], r, exs[names[idx]], metrics))
        html = f'<div id="icthp-explain" style="display:flex;gap:16px">{"".join(cols)}</div>'
        status = f"**{pick}** ({label(key)} {scores[i]:.4f}) beside the {role} **{names[j]}** ({scores[j]:.4f})."
        return ExplainResult(status_md=status + "\n\n" + COST_NOTE, html=html, explanations=exs)


def build(controller: Any, files: Any, prompt: Any, metrics: Any, errors: Any) -> None:
    """Add the Explain accordion to the current Gradio Blocks context, reading the Compare tab's inputs.

    `errors`: the app's decorator that turns user errors into a toast."""
    import gradio as gr

    from .controller import gradio_progress

    panel = ExplainPanel(controller)
    with gr.Accordion("Explain a score: heatmaps and word contributions", open=False, elem_id="exp-box"):
        gr.Markdown(COST_NOTE)
        with gr.Row():
            pick = gr.Dropdown(choices=[], label="Image to explain", elem_id="exp-pick", allow_custom_value=False)
            methods = gr.CheckboxGroup(
                ["relevance", "occlusion"], value=["relevance"], label="Region methods", elem_id="exp-methods"
            )
            grid = gr.Slider(2, 14, value=7, step=1, label="Occlusion grid", elem_id="exp-grid")
            go = gr.Button("Explain", variant="secondary", elem_id="exp-run")
        status = gr.Markdown(elem_id="exp-status")
        view = gr.HTML(elem_id="exp-view")

    def on_files(f: Any) -> Any:
        names = panel.choices(f)
        return gr.update(choices=names, value=names[0] if names else None)

    @errors
    def on_explain(f: Any, p: str, m: list[str], k: str, ms: list[str], g: float, progress=gr.Progress()) -> tuple:  # noqa: B008
        r = panel.run(f, p, m, k, ms, int(g), gradio_progress(progress))
        return r.status_md, r.html

    files.change(on_files, [files], [pick])
    go.click(on_explain, [files, prompt, metrics, pick, methods, grid], [status, view], api_name="explain")
