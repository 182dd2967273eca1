"""The Gradio UI: three tabs wired to `Controller` (all logic lives there and in `logic`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

from icthp_core.errors import ICTHPError

from . import explain_view
from .controller import Controller, gradio_progress
from .logic import InputError, label, public_message
from .render import CSS

DEFAULT_SELECTED = ("ict", "hp", "ict_hp")  # baselines are ticked when given a source (gradio_app/cli.py)


def _user_errors(fn: Any) -> Any:
    """Show input problems and model-loading failures as a Gradio error toast, not a stack trace."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InputError as e:
            raise gr.Error(public_message(str(e))) from None
        except (ICTHPError, OSError, RuntimeError, KeyError, ValueError) as e:
            raise gr.Error(public_message(f"{type(e).__name__}: {e}")) from None

    wrapped.__name__ = getattr(fn, "__name__", "handler")
    return wrapped


def _compare_tab(controller: Controller, metric_box: Callable[[str], gr.CheckboxGroup]) -> None:
    """Tab 1: score a few uploaded images for one prompt (cards, chart, table, CSV)."""
    limits = controller.limits
    with gr.Tab("Compare images", id="compare"):
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                files = gr.File(
                    file_count="multiple",
                    label=f"Images ({limits.min_count}–{limits.max_count}, ≤ {limits.max_bytes // 2**20} MiB each)",
                    elem_id="cmp-files",
                )
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="cmp-prompt")
                metrics = metric_box("cmp-metrics")
                run = gr.Button("Score and compare", variant="primary", elem_id="cmp-run")
            with gr.Column(scale=3):
                status = gr.Markdown(elem_id="cmp-status")
                cards = gr.HTML(elem_id="cmp-cards")
        chart = gr.Plot(label="Scores per metric (winner in gold)", elem_id="cmp-chart")
        table = gr.Dataframe(label="Scores and ranks", interactive=False, elem_id="cmp-table")
        csv = gr.File(label="Download scores (CSV)", elem_id="cmp-csv", interactive=False)

        @_user_errors
        def on_compare(f: Any, p: str, m: list[str], progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
            r = controller.compare(f, p, m, gradio_progress(progress))
            return r.status_md, r.cards_html, r.figure, r.table.round(6), str(r.csv_path)

        run.click(
            on_compare,
            [files, prompt, metrics],
            [status, cards, chart, table, csv],
            api_name="compare",
            show_progress="full",
        )
        explain_view.build(controller, files, prompt, metrics, _user_errors)


def _ab_tab(controller: Controller, metric_box: Callable[[str], gr.CheckboxGroup]) -> None:
    """Tab 2: two models' images matched by prompt, win rates with confidence intervals."""
    roots = controller.ab_roots
    with gr.Tab("A/B models", id="ab"):
        folder_help = (
            f"…or a folder under {', '.join(map(str, roots))}"
            if roots
            else "Folders: disabled (start with --ab-root DIR)"
        )
        with gr.Row():
            sides = []
            for s in ("A", "B"):
                with gr.Column():
                    name = gr.Textbox(value=s, label=f"Model {s} name", elem_id=f"ab-name-{s}")
                    up = gr.File(
                        file_count="multiple",
                        label=f"Model {s} images (+ optional <name>.txt prompts)",
                        elem_id=f"ab-files-{s}",
                    )
                    folder = gr.Textbox(label=folder_help, interactive=bool(roots), elem_id=f"ab-dir-{s}")
                    sides.append((name, up, folder))
        with gr.Row():
            index = gr.File(
                label="Index file, optional (CSV `prompt,file` or `prompt,a,b`; JSON prompt → file)",
                file_types=[".csv", ".tsv", ".json"],
                elem_id="ab-index",
            )
            with gr.Column():
                default_prompt = gr.Textbox(
                    label="Prompt for pairs without index entry or .txt file", elem_id="ab-prompt"
                )
                ci = gr.Radio(
                    ["wilson", "bootstrap"],
                    value=controller.ci_method,
                    label="Confidence interval (95%)",
                )
        metrics_ab = metric_box("ab-metrics")
        run_ab = gr.Button("Match, score and compare", variant="primary", elem_id="ab-run")
        status_ab = gr.Markdown(elem_id="ab-status")
        wins = gr.Dataframe(label="Win rate of A over B per metric", interactive=False, elem_id="ab-wins")
        chart_ab = gr.Plot(label="Win rate with CI", elem_id="ab-chart")
        csv_ab = gr.File(label="Download all scores (CSV)", elem_id="ab-csv", interactive=False)
        pairs = gr.HTML(elem_id="ab-pairs")

        @_user_errors
        def on_ab(
            na: str,
            fa: Any,
            da: str,
            nb: str,
            fb: Any,
            db: str,
            idx: Any,
            dp: str,
            cim: str,
            m: list[str],
            progress: gr.Progress = gr.Progress(),  # noqa: B008
        ) -> tuple:
            r = controller.compare_ab(fa, fb, da, db, idx, dp, m, cim, na, nb, gradio_progress(progress))
            a, b = (na or "A").strip() or "A", (nb or "B").strip() or "B"
            cols = {"A wins": f"{a} wins", "B wins": f"{b} wins", "A win rate": f"{a} win rate"}
            return r.status_md, r.wins.rename(columns=cols).round(4), r.figure, str(r.csv_path), r.pairs_html

        (na, fa, da), (nb, fb, db) = sides
        run_ab.click(
            on_ab,
            [na, fa, da, nb, fb, db, index, default_prompt, ci, metrics_ab],
            [status_ab, wins, chart_ab, csv_ab, pairs],
            api_name="compare_ab",
            show_progress="full",
        )


def _generate_tab(
    controller: Controller, metric_box: Callable[[str], gr.CheckboxGroup], generation_note: str | None
) -> None:
    """Tab 3: the base pipeline and base + LoRA from one seed, both scored (or a note when unavailable)."""
    with gr.Tab("Generate: base vs LoRA", id="generate"):
        if generation_note or controller.generator is None:
            gr.Markdown(generation_note or "Generation is not configured.", elem_id="gen-note")
        else:
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    gprompt = gr.Textbox(label="Prompt", lines=2, elem_id="gen-prompt")
                    seed = gr.Number(value=0, precision=0, label="Seed")
                    steps = gr.Slider(1, 100, value=28, step=1, label="Steps")
                    guidance = gr.Slider(0.0, 15.0, value=4.5, step=0.1, label="Guidance")
                    size = gr.Dropdown([512, 768, 1024], value=1024, label="Size")
                    metrics_g = metric_box("gen-metrics")
                    run_g = gr.Button("Generate both", variant="primary")
                with gr.Column(scale=2):
                    with gr.Row():
                        img_base = gr.Image(label="base", type="pil")
                        img_lora = gr.Image(label="base + LoRA", type="pil")
                    status_g = gr.Markdown()
                    table_g = gr.Dataframe(interactive=False)

            @_user_errors
            def on_generate(
                p: str,
                s: float,
                st: float,
                g: float,
                sz: int,
                m: list[str],
                progress: gr.Progress = gr.Progress(),  # noqa: B008
            ) -> tuple:
                r = controller.generate(p, int(s), int(st), g, int(sz), m, gradio_progress(progress))
                return r.images[0], r.images[1], r.status_md, r.table.round(6)

            run_g.click(
                on_generate,
                [gprompt, seed, steps, guidance, size, metrics_g],
                [img_base, img_lora, status_g, table_g],
                api_name="generate",
            )


def build_app(
    controller: Controller,
    *,
    default_metrics: Sequence[str] | None = None,
    generation_note: str | None = None,
    title: str = "ICT-HP reward comparison",
) -> gr.Blocks:
    """Build the Blocks app. `generation_note` (markdown) replaces tab 3 when generation is unavailable."""
    pool = controller.pool
    choices = [(label(m), m) for m in pool.metrics]
    selected = [m for m in (default_metrics or DEFAULT_SELECTED) if m in pool.metrics] or pool.metrics[:3]

    def metric_box(elem_id: str) -> gr.CheckboxGroup:
        return gr.CheckboxGroup(choices=choices, value=selected, label="Metrics", elem_id=elem_id)

    with gr.Blocks(title=title) as demo:
        gr.Markdown(
            f"## {title}\nICT (image–text alignment beyond CLIP), HP (pure image quality) and "
            "ICT-HP = ICT × HP (higher is better), next to CLIP-family baselines. "
            "Models load once and are shared by all users."
        )
        with gr.Tabs():
            _compare_tab(controller, metric_box)
            _ab_tab(controller, metric_box)
            _generate_tab(controller, metric_box, generation_note)
    return demo


LAUNCH_CSS = CSS
