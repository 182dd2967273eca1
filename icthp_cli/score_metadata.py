"""`icthp score --from-metadata`: how the scores stored in PNG metadata are shown (the rows come from the one score
pipeline, `icthp_core.scale.plan.metadata_plan`, and go to any --output like scored rows)."""

from __future__ import annotations


def metadata_lines(rows: list[dict], metrics: list[str]) -> list[str]:
    """One line per image with a record: its stored scores, model and prompt (error rows are reported apart)."""
    from icthp_core.data.images import display_name

    lines = []
    for r in rows:
        if r.get("error") is None:
            scores = "  ".join(f"{m}={r[m]:.4f}" for m in metrics if r.get(m) is not None)
            lines.append(
                f"{display_name(str(r['image']))}  {scores}  model={r.get('model')}  prompt={r.get('prompt')!r}"
            )
    return lines
