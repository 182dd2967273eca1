"""Score rows, the unit every output writes: `{"image", "prompt", kept columns..., <metric>: float, "error"}`.

One policy for every sink (JSONL, CSV, parquet, a folder of parquet shards):
- a row is identified by `row_key(image, prompt)` (a missing prompt counts as '');
- a score that is not a finite number is never written: the row gets null scores and an `error` naming the metric
  (JSON never holds bare `NaN`/`Infinity` tokens);
- kept input columns are written as text: strings as they are, numbers and booleans in their usual spelling,
  lists and objects as JSON, binary values as `base64:<data>` (never a Python `b'...'` repr).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence


def row_key(image: object, prompt: object) -> tuple[str, str]:
    """The identity of an item: (image, prompt); a missing prompt counts as ''."""
    return (str(image), "" if prompt is None else str(prompt))


def json_default(value: object) -> str:
    """`json.dumps(default=...)` for kept values: bytes as `base64:<data>`, anything else as `str(value)`."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "base64:" + base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def keep_text(value: object) -> str | None:
    """A kept input value as the text every sink writes (see the module docstring); None stays None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bool, int, float, list, tuple, dict)):
        try:
            return json.dumps(value, ensure_ascii=False, default=json_default)
        except (ValueError, RecursionError):  # NaN inside a list, or a nesting deeper than json can write
            return str(value)
    return json_default(value)


def finish_row(row: dict, metrics: Sequence[str], keep: Sequence[str] = ()) -> dict:
    """`row` with exactly the output columns: non-finite or missing scores of a scored row become an error."""
    out = {"image": row.get("image"), "prompt": row.get("prompt")}
    out.update({k: keep_text(row.get(k)) for k in keep})
    error = row.get("error")
    values = {m: row.get(m) for m in metrics}
    if error is None:
        bad = [m for m, v in values.items() if not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad:
            error = f"{row.get('image')}: no finite score for {', '.join(bad)} (written as null)"
    out.update({m: (float(v) if error is None else None) for m, v in values.items()})
    out["error"] = error
    return out
