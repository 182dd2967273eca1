"""What each tab does, without Gradio: inputs → validated files → scores → tables, HTML, chart, CSV."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import charts, csv_export, matching, ranking, render, uploads
from .logic import PRIMARY, InputError, alignment_baselines, label
from .pool import ProgressFn, ScorerPool
from .stored import StoredScores, read_stored_noted, stored_columns
from .uploads import UploadLimits


@dataclass
class CompareResult:
    names: list[str]
    paths: list[Path]
    scores: dict[str, np.ndarray]
    table: pd.DataFrame
    cards_html: str
    status_md: str
    figure: Figure
    csv_path: Path
    stored: list[StoredScores | None] = field(default_factory=list)


@dataclass
class ABResult:
    frame: pd.DataFrame
    wins: pd.DataFrame
    pairs_html: str
    status_md: str
    figure: Figure
    csv_path: Path


@dataclass
class GenResult:
    images: tuple[Any, Any]
    table: pd.DataFrame
    status_md: str


def _paths(files: Any) -> list[str]:
    """Gradio gives a path, a list of paths, or objects with `.name`; normalise to a list of str."""
    if files is None:
        return []
    if isinstance(files, (str, Path)):
        files = [files]
    return [str(getattr(f, "name", f)) for f in files]


class Controller:
    """The app's operations; one instance shared by all sessions (state lives in the pool only)."""

    def __init__(
        self,
        pool: ScorerPool,
        *,
        ab_roots: Sequence[str | Path] = (),
        limits: UploadLimits | None = None,
        max_pairs: int = 500,
        ci_method: str = "wilson",
        out_dir: str | Path | None = None,
        generator: Any = None,
    ) -> None:
        self.pool = pool
        self.ab_roots = [Path(r).resolve() for r in ab_roots]
        self.limits = limits or UploadLimits()
        self.max_pairs = max_pairs
        self.ci_method = ci_method
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="icthp_app_"))
        self.generator = generator

    #: result folders kept in out_dir (older ones are deleted when a new result is written)
    keep_results: int = 32

    def _csv(self, df: pd.DataFrame, name: str) -> Path:
        self._prune_results()
        return csv_export.write_csv(df, self.out_dir / uuid.uuid4().hex[:12] / name)

    def _prune_results(self) -> None:
        """Delete all but the newest `keep_results - 1` result folders, so a long-running app does not fill the disk."""
        if not self.out_dir.is_dir():
            return
        dirs = sorted((d for d in self.out_dir.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
        for d in dirs[: max(0, len(dirs) - self.keep_results + 1)]:
            shutil.rmtree(d, ignore_errors=True)

    # ------------------------------------------------------------------ tab 1
    def compare(
        self, files: Any, prompt: str, metrics: Sequence[str], progress: ProgressFn | None = None
    ) -> CompareResult:
        prompt = (prompt or "").strip()
        if not prompt:
            raise InputError("Type the prompt the images were generated for.")
        metrics = [m for m in self.pool.metrics if m in (metrics or [])]
        if not metrics:
            raise InputError("Select at least one metric.")
        paths, rejected = uploads.validate_images(_paths(files), self.limits)
        names = uploads.unique_names(paths)
        scores = self.pool.score(paths, prompt, metrics, progress)
        noted = [read_stored_noted(p) for p in paths]
        stored = [rec for rec, _ in noted]
        table = pd.concat([ranking.comparison_table(names, scores), stored_columns(stored)], axis=1)
        key = PRIMARY if PRIMARY in scores else metrics[0]
        top = ranking.winners(scores[key])
        lines = [f"**Winner ({label(key)}): {', '.join(names[i] for i in top)}**"]
        others = [f"{label(m)}: {', '.join(names[i] for i in ranking.winners(scores[m]))}" for m in metrics if m != key]
        if others:
            lines.append("Other metrics' winners — " + "; ".join(others))
        paradox = ranking.paradox_markdown(ranking.detect_paradox(scores), names)
        if paradox:
            lines.append(paradox)
        elif PRIMARY in scores and any(m in scores for m in alignment_baselines()):
            lines.append("CLIP-family metrics and ICT-HP agree on the winner.")
        if rejected:
            lines.append("Rejected uploads: " + "; ".join(rejected))
        if any(stored):
            lines.append(
                f"{sum(map(bool, stored))} image(s) carry scores stored when they were saved "
                "(shown as “stored”, not recomputed)."
            )
        notes = [f"{names[i]}: {note}" for i, (_, note) in enumerate(noted) if note]
        if notes:
            lines.append("Stored metadata — " + "; ".join(notes))
        csv_df = table.copy()
        csv_df.insert(1, "prompt", prompt)
        return CompareResult(
            names=names,
            paths=paths,
            scores=scores,
            table=table,
            cards_html=render.cards_html(names, paths, scores, stored=stored),
            status_md="\n\n".join(lines),
            figure=charts.scores_figure(names, scores),
            csv_path=self._csv(csv_df, "icthp_compare.csv"),
            stored=stored,
        )

    # ------------------------------------------------------------------ tab 2
    def _side(self, files: Any, folder: str | None, side: str) -> tuple[list[Path], list[str]]:
        if folder and folder.strip():
            d = uploads.resolve_allowed_dir(folder, self.ab_roots)
            candidates = [str(p) for p in uploads.list_folder(d, self.ab_roots)]
        else:
            candidates = _paths(files)
        if not candidates:
            raise InputError(f"Set {side}: upload its images or give a folder.")
        images = [p for p in candidates if Path(p).suffix.lower() != ".txt"]
        if len(images) > self.max_pairs:
            raise InputError(f"Set {side}: {len(images)} images is over the limit of {self.max_pairs}.")
        ok: list[Path] = [Path(p) for p in candidates if Path(p).suffix.lower() == ".txt"]
        rejected = []
        for p in images:
            why = uploads.check_image(p, self.limits)
            if why:
                rejected.append(f"{side}/{why}")
            else:
                ok.append(Path(p))
        return ok, rejected

    def compare_ab(
        self,
        a_files: Any,
        b_files: Any,
        a_dir: str | None,
        b_dir: str | None,
        index_file: Any,
        default_prompt: str | None,
        metrics: Sequence[str],
        ci_method: str | None = None,
        a_name: str = "A",
        b_name: str = "B",
        progress: ProgressFn | None = None,
    ) -> ABResult:
        metrics = [m for m in self.pool.metrics if m in (metrics or [])]
        if not metrics:
            raise InputError("Select at least one metric.")
        a_name, b_name = (a_name or "A").strip() or "A", (b_name or "B").strip() or "B"
        a, rej_a = self._side(a_files, a_dir, "A")
        b, rej_b = self._side(b_files, b_dir, "B")
        idx = _paths(index_file)
        index = matching.read_index(idx[0]) if idx else None
        match = matching.match_pairs(a, b, index=index, default_prompt=default_prompt)
        pairs = match.pairs
        if len(pairs) > self.max_pairs:
            raise InputError(f"{len(pairs)} pairs is over the limit of {self.max_pairs}.")
        prompts = [p.prompt for p in pairs]

        def part(lo: float, hi: float) -> ProgressFn | None:
            return None if progress is None else (lambda f, d: progress(lo + (hi - lo) * f, d))

        sa = self.pool.score([p.a for p in pairs], prompts, metrics, part(0.0, 0.5))
        sb = self.pool.score([p.b for p in pairs], prompts, metrics, part(0.5, 1.0))
        frame = matching.ab_frame(pairs, sa, sb)
        frame = frame.rename(columns={c: c.replace("A ", f"{a_name} ", 1) for c in frame if c.startswith("A ")})
        frame = frame.rename(columns={c: c.replace("B ", f"{b_name} ", 1) for c in frame if c.startswith("B ")})
        wins = matching.win_rate_table(sa, sb, method=ci_method or self.ci_method)
        status = [f"**{a_name}** vs **{b_name}**: " + match.summary()]
        if PRIMARY in sa:
            r = wins.set_index("metric").loc[label(PRIMARY)]
            status.append(
                f"{a_name} wins {r['A win rate']:.1%} of pairs under ICT-HP "
                f"(95% CI {r['CI low']:.1%}–{r['CI high']:.1%}, ties count ½)."
            )
        if rej_a or rej_b:
            status.append("Rejected: " + "; ".join(rej_a + rej_b))
        return ABResult(
            frame=frame,
            wins=wins,
            pairs_html=render.pairs_html(
                prompts, [p.a for p in pairs], [p.b for p in pairs], sa, sb, a_name=a_name, b_name=b_name
            ),
            status_md="\n\n".join(status),
            figure=charts.win_rate_figure(wins, a_name, b_name),
            csv_path=self._csv(frame, "icthp_ab_scores.csv"),
        )

    # ------------------------------------------------------------------ tab 3
    def generate(
        self,
        prompt: str,
        seed: int,
        steps: int,
        guidance: float,
        size: int,
        metrics: Sequence[str],
        progress: ProgressFn | None = None,
    ) -> GenResult:
        if self.generator is None:
            raise InputError("Generation is not configured (see the explanation in this tab).")
        prompt = (prompt or "").strip()
        if not prompt:
            raise InputError("Type a prompt.")
        if progress:
            progress(0.05, "Generating base and LoRA images (same seed) …")
        base, lora = self.generator.generate(prompt, int(seed), int(steps), float(guidance), int(size))
        metrics = [m for m in self.pool.metrics if m in (metrics or [])]
        scores = self.pool.score([base, lora], prompt, metrics, progress) if metrics else {}
        table = ranking.comparison_table(["base", "base + LoRA"], scores) if scores else pd.DataFrame()
        md = ""
        if PRIMARY in scores:
            d = float(scores[PRIMARY][1] - scores[PRIMARY][0])
            md = f"ICT-HP of LoRA − base: **{d:+.4f}** (seed {int(seed)})"
        return GenResult(images=(base, lora), table=table, status_md=md)


def gradio_progress(progress: Any) -> Callable[[float, str], None]:
    def fn(frac: float, desc: str) -> None:
        progress(frac, desc=desc)

    return fn
