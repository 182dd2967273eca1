"""One list each (issue 19, point 8): hub repos and files, dtype names, prompt columns, ComfyUI node ids and the
ranking rule each live in one place; the copies that remain are generated from it or checked against it here."""

from __future__ import annotations

import ast
import json
import math
import re
import runpy
from collections.abc import Iterator
from pathlib import Path

import pytest

from icthp_core.checkpoints.manager import MANIFEST, load_manifest
from icthp_core.data.prompts import PROMPT_COLUMNS
from icthp_core.dtypes import DTYPE_CHOICES, DTYPE_NAMES, parse_dtype
from icthp_core.scoring.registry import METRICS, hub_manifest
from icthp_core.scoring.selection import competition_ranks, rank, ranking_order

REPO = Path(__file__).resolve().parents[1]
#: the shipped code (tests may spell values out to check them)
CODE = ["icthp_core", "icthp_cli", "gradio_app", "comfy_nodes", "bench", "examples", "train", "scripts"]


def code_files() -> Iterator[Path]:
    for folder in CODE:
        yield from sorted((REPO / folder).rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def string_literals(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every string constant of a file that is not a docstring (f-string parts included)."""
    tree = ast.parse(path.read_text(), str(path))
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def literal_collections(path: Path) -> Iterator[tuple[int, set[str]]]:
    """(line, strings) of every tuple/list/set literal and every dict literal's keys in a file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            elts = node.elts
        elif isinstance(node, ast.Dict):
            elts = [k for k in node.keys if k is not None]
        else:
            continue
        yield node.lineno, {e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}


# ---------------------------------------------------------------- hub repos and files


def test_manifest_is_generated_from_the_registry():
    """checkpoints/manifest.json is exactly what scripts/write_manifest.py writes from the registry."""
    script = runpy.run_path(str(REPO / "scripts" / "write_manifest.py"))
    assert Path(MANIFEST).read_text(encoding="utf-8") == script["manifest_text"](), (
        "manifest.json differs from the registry: run `python scripts/write_manifest.py`"
    )


def test_manifest_covers_every_published_model_blip_included():
    models = load_manifest()
    bases = {s.model for s in METRICS.values() if not s.derived and s.default_source}  # (some need --source)
    assert set(models) == bases, set(models) ^ bases
    assert {"blip_itc", "blip_itm", "blip_itm_cls", "imagereward", "ict", "hp"} <= set(models)
    for name, entry in models.items():
        spec = METRICS[name]
        assert entry["repo"] == spec.default_source
        assert [f["path"] for f in entry["files"]] == [f.path for f in spec.files]
    assert models["blip_itc"]["repo"] == "Salesforce/blip-itm-large-coco"
    assert "model.safetensors" in [f["path"] for f in models["blip_itm"]["files"]]
    assert json.loads(Path(MANIFEST).read_text())["format"] == hub_manifest()["format"] == 1


def test_hub_ids_of_ict_and_hp_only_in_the_registry():
    repos = {METRICS["ict"].default_source, METRICS["hp"].default_source}
    assert repos == {"8y/ICT", "8y/HP"}
    found = [
        f"{f.relative_to(REPO)}:{line}"
        for f in code_files()
        for line, text in string_literals(f)
        if any(r in text for r in repos)
    ]
    assert found == [f"icthp_core/scoring/registry.py:{n}" for n in _registry_lines(repos)], found


def _registry_lines(repos: set[str]) -> list[int]:
    path = REPO / "icthp_core" / "scoring" / "registry.py"
    return [line for line, text in string_literals(path) if any(r in text for r in repos)]


# ---------------------------------------------------------------- dtype names and prompt columns


def test_dtype_names_only_in_dtypes_py():
    """No other module spells the list of dtype names (choices, dropdowns, name -> dtype tables: 3 or more names;
    a pair such as `("fp16", "bf16")` in a condition is logic, not a list)."""
    found = [
        f"{f.relative_to(REPO)}:{line}"
        for f in code_files()
        if f != REPO / "icthp_core" / "dtypes.py"
        for line, names in literal_collections(f)
        if len(names & set(DTYPE_NAMES)) >= 3
    ]
    assert found == [], found
    assert set(DTYPE_CHOICES) <= set(DTYPE_NAMES)
    assert [str(parse_dtype(n)) for n in DTYPE_CHOICES] == ["torch.float32", "torch.float16", "torch.bfloat16"]


def test_one_prompt_column_list():
    found = [
        f"{f.relative_to(REPO)}:{line}"
        for f in code_files()
        for line, names in literal_collections(f)
        if {"prompt", "caption", "text"} <= names  # (WebDataset member extensions are another list)
    ]
    assert found == [f"icthp_core/data/prompts.py:{_line_of('PROMPT_COLUMNS', REPO / 'icthp_core/data/prompts.py')}"]
    assert PROMPT_COLUMNS[0] == "prompt" and {"caption", "text", "txt", "easy_prompt"} <= set(PROMPT_COLUMNS)


def _line_of(name: str, path: Path) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.startswith(f"{name} ="))


# ---------------------------------------------------------------- ComfyUI node ids


def comfy_node_ids() -> list[str]:
    """The class names listed in `comfy_nodes.NODES`, read statically (importing the pack needs ComfyUI)."""
    tree = ast.parse((REPO / "comfy_nodes" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "NODES":
            return [e.id for e in node.value.elts]
    raise AssertionError("comfy_nodes/__init__.py: no NODES list")


def _classes_showing_text() -> set[str]:
    """Node classes of the pack whose result carries `ui.PreviewText` (the ones web/icthp.js shows)."""
    out = set()
    for f in sorted((REPO / "comfy_nodes").glob("*.py")):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.ClassDef) and "ui.PreviewText" in ast.unparse(node):
                out.add(node.name)
    return out


def test_node_ids_from_one_list():
    ids = comfy_node_ids()
    assert len(ids) == len(set(ids)) >= 11 and all(i.startswith("ICTHP") for i in ids)
    js = (REPO / "web" / "icthp.js").read_text()
    js_ids = set(re.findall(r'"(ICTHP\w+)"', js.partition("new Set([")[2].partition("])")[0]))
    assert js_ids == _classes_showing_text(), "web/icthp.js NODES must list exactly the nodes that return ui text"
    assert js_ids <= set(ids)
    doc = ast.get_docstring(ast.parse((REPO / "comfy_nodes" / "__init__.py").read_text()))
    assert not set(re.findall(r"ICTHP\w+", doc)) - set(ids), "the pack docstring names a node that is not in NODES"


# ---------------------------------------------------------------- the ranking rule


@pytest.mark.parametrize(
    ("scores", "order", "ranks"),
    [
        ([0.2, 0.9, 0.5], [1, 2, 0], [3, 1, 2]),
        ([0.5, 0.9, 0.5, 0.1], [1, 0, 2, 3], [2, 1, 2, 4]),  # ties share the better rank, keep input order
        ([math.nan, 0.3, 0.3], [1, 2, 0], [None, 1, 1]),  # NaN last and unranked
        ([math.nan, math.nan], [0, 1], [None, None]),
    ],
)
def test_one_ranking_rule(scores, order, ranks):
    assert ranking_order(scores) == order
    assert competition_ranks(scores) == ranks
    assert rank(scores, len(scores)).selected == order  # best-of-N selection (ComfyUI nodes, early best-of-N)


def test_front_ends_rank_with_the_core_rule():
    from gradio_app import ranking
    from icthp_cli.score import rank_table

    scores = [0.5, 0.9, 0.5, math.nan]
    assert ranking.rank(scores) == competition_ranks(scores)
    rows = [{"image": f"{i}.png", "prompt": "p", "ict_hp": s, "error": None} for i, s in enumerate(scores[:3])]
    table = rank_table(rows, ["ict_hp"]).splitlines()[1:]
    assert [line.split()[-1] for line in table] == ["2", "1", "2"]
