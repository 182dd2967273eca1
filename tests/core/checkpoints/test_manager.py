"""Model manager and `icthp download` against a fake hub on 127.0.0.1 (no network): download, resume, size and
SHA-256 verification, offline listing, safetensors conversion, and one bad file not stopping the others."""

import hashlib
import io
import json

import pytest
import torch
from fake_hub import FakeHub

from icthp_cli.main import main as cli
from icthp_core.checkpoints.manager import fetch, load_manifest


def _bin(seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    buf = io.BytesIO()
    w = torch.randn(64, 64, generator=g)
    torch.save({"a.weight": w, "tied.weight": w, "b.bias": torch.randn(64, generator=g)}, buf)
    return buf.getvalue()


@pytest.fixture()
def hub_files():
    return {
        "8y/ICT": {"pytorch_model.bin": _bin(0)},
        "8y/HP": {"hp_backbone/pytorch_model.bin": _bin(1), "hp_scorer/mlp_pytorch_model.bin": _bin(2)},
    }


@pytest.fixture()
def manifest(tmp_path, hub_files):
    """The repository manifest's ICT/HP entries, with the fake files' sizes and hashes filled in for ICT only."""
    models = load_manifest()
    ict = hub_files["8y/ICT"]["pytorch_model.bin"]
    models["ict"]["files"][0].update(size=len(ict), sha256=hashlib.sha256(ict).hexdigest())
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"models": {k: models[k] for k in ("ict", "hp")}}))
    return path


def test_download_verify_convert(tmp_path, hub_files, manifest):
    root = tmp_path / "models" / "icthp"
    with FakeHub(hub_files) as hub:
        reports = fetch(["ict", "hp"], root, endpoint=hub.url, manifest=manifest, convert=True, progress=False)
    states = {r.path: r.state for r in reports}
    assert states == {
        "pytorch_model.bin": "ok",  # size and hash in the manifest
        "hp_backbone/pytorch_model.bin": "unverified",  # no hash recorded: reported, with the computed one
        "hp_scorer/mlp_pytorch_model.bin": "unverified",
    }
    assert (root / "ict" / "pytorch_model.bin").read_bytes() == hub_files["8y/ICT"]["pytorch_model.bin"]
    assert reports[1].sha256 == hashlib.sha256(hub_files["8y/HP"]["hp_backbone/pytorch_model.bin"]).hexdigest()
    from safetensors.torch import load_file

    conv = load_file(root / "ict" / "model.safetensors")
    ref = torch.load(root / "ict" / "pytorch_model.bin", weights_only=True)
    assert conv.keys() == ref.keys() and all(torch.equal(conv[k], ref[k]) for k in ref)
    assert (root / "hp" / "hp_scorer" / "mlp.safetensors").is_file()


@pytest.mark.slow  # 2.2 s: the fast tier keeps the download / verify / convert happy paths above
def test_bad_hash_resume_and_offline(tmp_path, hub_files, manifest):
    root = tmp_path / "icthp"
    good = hub_files["8y/ICT"]["pytorch_model.bin"]
    tampered = {**hub_files, "8y/ICT": {"pytorch_model.bin": good[:-1] + bytes([good[-1] ^ 1])}}
    with FakeHub(tampered) as hub:
        reports = fetch(["ict", "hp"], root, endpoint=hub.url, manifest=manifest, progress=False)
    assert reports[0].state == "bad" and "sha256" in reports[0].message
    assert [r.state for r in reports[1:]] == ["unverified", "unverified"]  # the others still downloaded

    # resume: the connection drops after 12 of 24 MiB; huggingface_hub asks for the rest (one 10 MiB chunk was
    # written) with a ranged request, and the file verifies
    import os

    root2 = tmp_path / "icthp2"
    big = os.urandom(24 << 20)
    files = {"8y/ICT": {"pytorch_model.bin": big}}
    big_manifest = tmp_path / "big.json"
    entry = {"path": "pytorch_model.bin", "size": len(big), "sha256": hashlib.sha256(big).hexdigest()}
    big_manifest.write_text(json.dumps({"models": {"ict": {"repo": "8y/ICT", "folder": "ict", "files": [entry]}}}))
    with FakeHub(files) as hub:
        hub.cut_next.add("8y/ICT/pytorch_model.bin")
        reports = fetch(["ict"], root2, endpoint=hub.url, manifest=big_manifest, progress=False)
        ranges = [rng for method, _, rng in hub.requests if method == "GET"]
    assert reports[0].state == "ok"
    assert ranges == [None, f"bytes={10 << 20}-"]

    # offline: nothing fetched; what is present is listed (size checked) and what is missing is said
    (root2 / "ict" / "pytorch_model.bin").write_bytes(good[:10])
    reports = fetch(["ict", "hp"], root2, offline=True, manifest=manifest)
    assert [r.state for r in reports] == ["bad", "missing", "missing"]
    assert "offline" in reports[1].message


def test_cli_download(tmp_path, hub_files, manifest, capsys):
    comfy = tmp_path / "ComfyUI"
    with FakeHub(hub_files) as hub:
        rc = cli(["download", "ict", "--comfyui", str(comfy), "--endpoint", hub.url, "--manifest", str(manifest)])
    out = capsys.readouterr()
    assert rc == 0 and out.out.startswith("ok ") and (comfy / "models/icthp/ict/pytorch_model.bin").is_file()
    rc = cli(["download", "hp", "--comfyui", str(comfy), "--offline", "--manifest", str(manifest)])
    out = capsys.readouterr()
    assert rc == 2 and out.out.count("missing") == 2 and "2 missing" in out.err
    assert cli(["download", "nope", "--offline"]) == 2
    assert "unknown model(s) ['nope']" in capsys.readouterr().err
    assert cli(["download", "--list"]) == 0 and "8y/ICT" in capsys.readouterr().out
    # --print-hashes: the manifest with the present files' sizes and hashes, usable as a verified manifest
    args = ["download", "ict", "--comfyui", str(comfy), "--offline", "--manifest", str(manifest), "--print-hashes"]
    assert cli(args) == 0
    filled = json.loads(capsys.readouterr().out)
    data = (comfy / "models/icthp/ict/pytorch_model.bin").read_bytes()
    assert filled["models"]["ict"]["files"][0] | {"safetensors": None} == {
        "path": "pytorch_model.bin",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "safetensors": None,
    }


def test_hf_cache_target(tmp_path, hub_files, manifest):
    """Without a folder the files land in the Hugging Face cache, where a later offline run finds them."""
    cache = tmp_path / "hf"
    with FakeHub(hub_files) as hub:
        (first,) = fetch(["ict"], None, endpoint=hub.url, manifest=manifest, cache_dir=cache, progress=False)
    assert first.state == "ok" and str(first.local).startswith(str(cache))
    (again,) = fetch(["ict"], None, offline=True, manifest=manifest, cache_dir=cache)
    assert again.state == "present" and again.local == first.local
