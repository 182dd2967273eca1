"""`icthp download` (its own process, as a user runs it; tests/jobproc.py) against a fake hub on 127.0.0.1: truncated
and tampered files are moved out of the loaders' path and fetched again, manifest paths stay inside the model folder,
and one unreadable file is an error row while the others are still fetched and converted."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess

import jobproc
import pytest
import torch
from fake_hub import FakeHub


def _bin(seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    buf = io.BytesIO()
    torch.save({"w": torch.randn(32, 32, generator=g)}, buf)
    return buf.getvalue()


ICT, HP_BACKBONE, HP_MLP = _bin(0), _bin(1), _bin(2)


def _flip(data: bytes) -> bytes:
    """The same size, one byte in the middle changed."""
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


def _manifest(tmp_path, models: dict) -> str:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"format": 1, "models": models}))
    return str(path)


def _entry(path: str, data: bytes | None = None, safetensors: str | None = None) -> dict:
    """A manifest file entry; with `data`, its size and sha256 are recorded."""
    size, sha = (len(data), hashlib.sha256(data).hexdigest()) if data is not None else (None, None)
    return {"path": path, "size": size, "sha256": sha, "safetensors": safetensors}


def _download(*args: str) -> subprocess.CompletedProcess:
    return jobproc.run(["download", "--no-progress", *args], timeout=300)


def _row(out: str, path: str) -> str:
    return next(line for line in out.splitlines() if f"/{path} ->" in line)


@pytest.mark.slow
def test_bad_copies_are_quarantined_and_fetched_again(tmp_path):
    root = tmp_path / "models"
    (root / "hp" / "hp_backbone").mkdir(parents=True)
    (root / "hp" / "hp_backbone" / "pytorch_model.bin").write_bytes(HP_BACKBONE[:100])  # a torn earlier download
    (root / "ict").mkdir()
    (root / "ict" / "pytorch_model.bin").write_bytes(_flip(ICT))  # same size, other bytes
    models = {
        "ict": {"repo": "8y/ICT", "folder": "ict", "files": [_entry("pytorch_model.bin", ICT)]},
        "hp": {"repo": "8y/HP", "folder": "hp", "files": [_entry("hp_backbone/pytorch_model.bin")]},  # no size
    }
    hub_files = {"8y/ICT": {"pytorch_model.bin": ICT}, "8y/HP": {"hp_backbone/pytorch_model.bin": HP_BACKBONE}}
    with FakeHub(hub_files) as hub:
        run = _download(
            "ict", "hp", "--dir", str(root), "--endpoint", hub.url, "--manifest", _manifest(tmp_path, models)
        )
    assert run.returncode == 0, run.stdout + run.stderr
    ict_row, hp_row = _row(run.stdout, "pytorch_model.bin"), _row(run.stdout, "hp_backbone/pytorch_model.bin")
    assert ict_row.startswith("ok ") and "sha256" in ict_row and "fetched again" in ict_row
    assert hp_row.startswith("unverified ") and "size 100 != hub" in hp_row and "fetched again" in hp_row
    assert (root / "ict" / "pytorch_model.bin").read_bytes() == ICT
    assert (root / "hp" / "hp_backbone" / "pytorch_model.bin").read_bytes() == HP_BACKBONE
    assert (root / "hp" / "hp_backbone" / "pytorch_model.bin.bad").read_bytes() == HP_BACKBONE[:100]
    assert str(root / "ict" / "pytorch_model.bin.bad") in ict_row  # the report says where it went

    # a hub that serves a tampered file: the download is moved aside, nothing is left where loaders look
    tampered = {"8y/ICT": {"pytorch_model.bin": _flip(ICT)}}
    root2 = tmp_path / "models2"
    with FakeHub(tampered) as hub:
        run = _download("ict", "--dir", str(root2), "--endpoint", hub.url, "--manifest", _manifest(tmp_path, models))
    row = _row(run.stdout, "pytorch_model.bin")
    assert run.returncode != 0 and row.startswith("bad ") and "moved to" in row
    assert not (root2 / "ict" / "pytorch_model.bin").exists() and (root2 / "ict" / "pytorch_model.bin.bad").exists()

    # offline: a bad copy is only moved (nothing can be fetched) and the row says how to get it back
    (root2 / "ict" / "pytorch_model.bin").write_bytes(ICT[:10])
    run = _download("ict", "--dir", str(root2), "--offline", "--manifest", _manifest(tmp_path, models))
    row = _row(run.stdout, "pytorch_model.bin")
    assert run.returncode != 0 and row.startswith("bad ") and "online to fetch it again" in row
    assert not (root2 / "ict" / "pytorch_model.bin").exists()


@pytest.mark.slow
def test_manifest_paths_stay_inside_the_model_folder_and_one_bad_file_is_one_row(tmp_path):
    root = tmp_path / "a" / "models"
    models = {
        "evil_folder": {"repo": "8y/ICT", "folder": "../../escaped", "files": [_entry("pytorch_model.bin")]},
        "evil_path": {"repo": "8y/ICT", "folder": "x", "files": [_entry("/tmp/abs.bin"), _entry("../up.bin")]},
        "evil_target": {"repo": "8y/ICT", "folder": "y", "files": [_entry("pytorch_model.bin", None, "../../t.st")]},
        "hp": {
            "repo": "8y/HP",
            "folder": "hp",
            "files": [
                _entry("hp_backbone/pytorch_model.bin", None, "hp_backbone/model.safetensors"),
                _entry("hp_scorer/mlp_pytorch_model.bin", None, "hp_scorer/mlp.safetensors"),
            ],
        },
    }
    unreadable = b"PK\x03\x04" + b"\0" * 200  # what a broken upload looks like: a zip header and nothing
    hub_files = {
        "8y/ICT": {"pytorch_model.bin": ICT},
        "8y/HP": {"hp_backbone/pytorch_model.bin": unreadable, "hp_scorer/mlp_pytorch_model.bin": HP_MLP},
    }
    args = ["all", "--dir", str(root), "--convert", "--manifest", _manifest(tmp_path, models)]
    with FakeHub(hub_files) as hub:
        run = _download(*args, "--endpoint", hub.url)
    assert run.returncode != 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    rows = run.stdout.splitlines()
    errors = [r for r in rows if r.startswith("error ")]
    assert len(errors) == 5, rows  # 4 refused manifest entries + the unreadable file
    assert any("folder = '../../escaped'" in r for r in errors)
    assert any("'/tmp/abs.bin'" in r for r in errors) and any("'../up.bin'" in r for r in errors)
    assert any("safetensors = '../../t.st'" in r for r in errors)
    assert any("hp_backbone/pytorch_model.bin" in r and "cannot convert" in r for r in errors)
    assert list(tmp_path.glob("escaped*")) == [] and not (tmp_path / "a" / "t.st").exists()
    assert not (tmp_path / "up.bin").exists() and not (root / "up.bin").exists()
    mlp = _row(run.stdout, "hp_scorer/mlp_pytorch_model.bin")
    assert mlp.startswith("unverified ") and "safetensors copy" in mlp  # the good file was still converted
    assert (root / "hp" / "hp_scorer" / "mlp.safetensors").is_file()
    assert "error" in run.stderr.splitlines()[-1]  # the summary counts them
