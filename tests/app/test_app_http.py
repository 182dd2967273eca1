"""`icthp app` as a program talks to it, without a browser: the live server of tests/app/conftest.py (tiny models,
started while pytest collects), images uploaded through Gradio's upload route, the `compare` API called, and the CSV
it offers downloaded. The fast tier's happy path of the app job; the browser tests (marked slow) check the page.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import requests
from test_app_browser import PROMPT, _reference  # the browser tests' prompt and reference scores (core scorers)


def _upload(url: str, paths) -> list[dict]:
    """Gradio's upload route, as the page uses it: the server paths of the uploaded files, as FileData."""
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    r = requests.post(url + "gradio_api/upload", files=files, timeout=30)
    r.raise_for_status()
    meta = {"_type": "gradio.FileData"}
    return [{"path": p, "orig_name": f.name, "meta": meta} for p, f in zip(r.json(), paths, strict=True)]


def _call(url: str, api: str, data: list) -> list:
    """POST `gradio_api/call/API` then read its event stream: the outputs of the `complete` event."""
    r = requests.post(f"{url}gradio_api/call/{api}", json={"data": data}, timeout=30)
    r.raise_for_status()
    stream = requests.get(f"{url}gradio_api/call/{api}/{r.json()['event_id']}", timeout=120).text
    events = stream.split("event: ")
    done = [e for e in events if e.startswith("complete")]
    assert done, stream[-2000:]
    return json.loads(done[-1].split("data: ", 1)[1])


def test_compare_through_the_api_matches_the_core(server, tiny_models, make_scenes, tmp_path):
    names = ["meadow.png", "dusk.png", "night.png"]
    paths = make_scenes(tmp_path / "up", names)
    status, cards, _chart, table, csv_file = _call(
        server["url"], "compare", [_upload(server["url"], paths), PROMPT, list(server["metrics"])]
    )
    ref = _reference(tiny_models, paths, PROMPT)
    best = names[int(np.argmax(ref["ict_hp"]))]
    assert f"Winner (ICT-HP): {best}" in status
    assert cards.count('class="icthp-card') == len(names) and f'data-name="{best}"' in cards
    shown = pd.DataFrame(table["data"], columns=table["headers"])
    assert shown["image"].tolist() == names
    csv = pd.read_csv(io.BytesIO(requests.get(csv_file["url"], timeout=30).content))
    assert csv["image"].tolist() == names and set(csv["prompt"]) == {PROMPT}
    for m, col in (("ict", "ICT"), ("hp", "HP"), ("ict_hp", "ICT-HP"), ("clip", "CLIP")):
        np.testing.assert_allclose(csv[col].to_numpy(), ref[m], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(shown[col].astype(float).to_numpy(), ref[m], atol=1e-6)
    assert csv["ICT-HP rank"].tolist() == [int((ref["ict_hp"] > v).sum()) + 1 for v in ref["ict_hp"]]


def test_api_refuses_server_paths_not_uploaded(server, tiny_models):
    """A crafted API call naming a server file (not uploaded) is refused before our code reads it."""
    secret = {"path": str(Path(tiny_models["ict"]) / "config.json"), "meta": {"_type": "gradio.FileData"}}
    url = f"{server['url']}gradio_api/call/compare"
    r = requests.post(url, json={"data": [[secret] * 2, PROMPT, ["hp"]]}, timeout=10)
    r.raise_for_status()
    stream = requests.get(f"{url}/{r.json()['event_id']}", timeout=60).text
    assert "event: error" in stream and "not uploaded by a user" in stream, stream
