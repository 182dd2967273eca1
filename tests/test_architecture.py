"""Contracts of the layout: layers never point upward, `import icthp_core` stays light, the installed wheel has no
generic top-level name and `icthp --help` lists every job, and docs/core_api.md names only things that exist."""

from __future__ import annotations

import ast
import graphlib
import importlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: package folder -> import names it must never import (the layers below may not know the ones above)
FORBIDDEN = {
    "icthp_core": {"icthp_cli", "icthp_app", "gradio_app", "comfy_nodes", "train"},
    "gradio_app": {"icthp_cli", "comfy_nodes", "train"},
    "comfy_nodes": {"icthp_cli", "icthp_app", "gradio_app", "train"},
}
#: what `import icthp_core` must not load: training, diffusion, app, scale-out and front-end dependencies
HEAVY = [
    "accelerate",
    "diffusers",
    "peft",
    "gradio",
    "pandas",
    "matplotlib",
    "tensorboard",
    "ray",
    "pyarrow",
    "icthp_cli",
    "icthp_app",
    "comfy_nodes",
]


def imported_names(path: Path) -> set[str]:
    """Top-level names of every absolute import in a file (module level and inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_never_import_upward(package):
    bad = []
    for f in sorted((REPO / package).rglob("*.py")):
        crossed = imported_names(f) & FORBIDDEN[package]
        if crossed:
            bad.append(f"{f.relative_to(REPO)} imports {sorted(crossed)}")
    assert not bad, "\n".join(bad)


def test_the_contract_test_can_fail(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from icthp_cli.main import main\n")
    assert imported_names(f) & FORBIDDEN["icthp_core"] == {"icthp_cli"}


#: what only the command line may use: argparse, the process's argv, exiting the process
CLI_ONLY_MODULES = {"argparse"}
CLI_ONLY_ATTRIBUTES = {("sys", "argv"), ("sys", "exit")}


def command_line_uses(path: Path) -> list[str]:
    """`import argparse`, `sys.argv` and `sys.exit` in a file (module level and inside functions)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {node.lineno}: import {n}" for n in names if n.split(".")[0] in CLI_ONLY_MODULES]
            if isinstance(node, ast.ImportFrom) and node.module == "sys":
                bad = [a.name for a in node.names if ("sys", a.name) in CLI_ONLY_ATTRIBUTES]
                found += [f"line {node.lineno}: from sys import {n}" for n in bad]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in CLI_ONLY_ATTRIBUTES:
                found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("package", ["icthp_core", "gradio_app"])
def test_no_command_line_outside_icthp_cli(package):
    """The core and the app take typed arguments: no argparse, no sys.argv, no sys.exit (icthp_cli owns those)."""
    bad = []
    for f in sorted((REPO / package).rglob("*.py")):
        rel = f.relative_to(REPO).as_posix()
        bad += [f"{rel} {use}" for use in command_line_uses(f)]
    assert not bad, "\n".join(bad)


def test_the_command_line_check_can_fail(tmp_path):
    """A planted violation of each kind is found (so the check above is not vacuous)."""
    f = tmp_path / "planted.py"
    f.write_text("import argparse\nimport sys\n\n\ndef main():\n    a = sys.argv[1:]\n    sys.exit(0)\n")
    assert command_line_uses(f) == ["line 1: import argparse", "line 6: sys.argv", "line 7: sys.exit"]
    f.write_text("def f():\n    from argparse import ArgumentParser\n    from sys import exit\n")
    assert command_line_uses(f) == ["line 2: import argparse", "line 3: from sys import exit"]
    pkg = tmp_path / "icthp_core"
    pkg.mkdir()
    (pkg / "ok.py").write_text("import os\n")
    assert not command_line_uses(pkg / "ok.py")


def test_every_command_is_an_icthp_cli_module_with_add_arguments_and_run():
    from icthp_cli.main import COMMANDS

    for c in COMMANDS:
        assert c.module.startswith("icthp_cli."), c
        path = REPO / (c.module.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text(), str(path))
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert {"add_arguments", "run"} <= functions, f"{path.relative_to(REPO)} lacks add_arguments/run"


def core_tiers(doc: Path = REPO / "docs" / "architecture.md") -> list[set[str]]:
    """The direction of the core, read from the `Direction:` line of docs/architecture.md (lowest tier first;
    `|` separates siblings of one tier, which may not import each other)."""
    for line in doc.read_text().splitlines():
        if line.startswith("Direction:"):
            body = line.partition(":")[2].strip().strip("`")
            return [{p.strip() for p in tier.split("|")} for tier in body.split("→")]
    raise AssertionError(f"{doc}: no 'Direction:' line")


def _unit(parts: list[str]) -> str:
    """The tier unit of module `icthp_core.<a>.<b>`: its sub-package or top-level module (`__init__`: the facade)."""
    return parts[1] if len(parts) > 1 else "__init__"


def _is_unit(root: Path, name: str) -> bool:
    return (root / "icthp_core" / name).is_dir() or (root / "icthp_core" / f"{name}.py").is_file()


def core_imports(root: Path) -> list[tuple[str, str, str]]:
    """(file:line, importing unit, imported unit) of every import between units of the `icthp_core` folder at
    `root`, module level and inside functions, absolute and relative."""
    out = []
    for f in sorted((root / "icthp_core").rglob("*.py")):
        mod = list(f.relative_to(root).with_suffix("").parts)
        package = mod[:-1]
        here = _unit(mod if mod[-1] != "__init__" else package)
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                targets = [a.name.split(".") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = base + (node.module.split(".") if node.module else [])
                # `from icthp_core import scoring` names a unit, `from icthp_core import X` the facade
                targets = [target + [a.name] if len(target) == 1 else target for a in node.names]
            else:
                continue
            for t in targets:
                if t[0] == "icthp_core":
                    there = _unit(t) if len(t) == 1 or _is_unit(root, t[1]) else "__init__"
                    if there != here:
                        out.append((f"{f.relative_to(root)}:{node.lineno}", here, there))
    return out


def direction_violations(root: Path, tiers: list[set[str]]) -> list[str]:
    """Imports that point up (or sideways between siblings), and units placed in no tier."""
    rank = {unit: i for i, tier in enumerate(tiers) for unit in tier}
    bad = []
    for where, here, there in core_imports(root):
        for unit in (here, there):
            if unit not in rank:
                bad.append(f"{where}: icthp_core.{unit} is in no tier of the Direction line")
        if here in rank and there in rank and rank[there] >= rank[here]:
            bad.append(f"{where}: icthp_core.{here} imports icthp_core.{there} (against the direction)")
    return bad


def package_cycles(root: Path) -> list[str]:
    """A cycle of the unit graph, if any ([] when it is a DAG)."""
    graph: dict[str, set[str]] = {}
    for _, here, there in core_imports(root):
        graph.setdefault(here, set()).add(there)
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        return list(e.args[1])
    return []


def test_core_follows_its_direction():
    tiers = core_tiers()
    assert len(tiers) >= 6
    units = {p.name for p in (REPO / "icthp_core").iterdir() if (p / "__init__.py").exists()}
    units |= {p.stem for p in (REPO / "icthp_core").glob("*.py") if p.stem != "__init__"}
    placed = set().union(*tiers)
    assert units <= placed, f"packages missing from the Direction line: {sorted(units - placed)}"
    assert not direction_violations(REPO, tiers), "\n".join(direction_violations(REPO, tiers))


def test_core_has_no_package_cycles():
    assert package_cycles(REPO) == []


def _plant(root: Path, path: str, text: str) -> None:
    f = root / path
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(text)
    for parent in f.relative_to(root).parents:
        if str(parent) != ".":
            (root / parent / "__init__.py").touch()


def test_direction_check_fails_on_planted_violations(tmp_path):
    """An upward import inside a function, a relative one and a sibling one are all found; a cycle is found."""
    tiers = [{"errors"}, {"data"}, {"scoring"}, {"training", "diffusion"}]
    _plant(tmp_path, "icthp_core/errors.py", "")
    _plant(tmp_path, "icthp_core/scoring/registry.py", "from icthp_core.data.images import load\n")
    _plant(tmp_path, "icthp_core/data/images.py", "def f():\n    from icthp_core.scoring.registry import METRICS\n")
    _plant(tmp_path, "icthp_core/data/outputs.py", "from ..scoring import text\nfrom icthp_core import errors\n")
    _plant(tmp_path, "icthp_core/training/engine.py", "import icthp_core.diffusion.draft\n")
    _plant(tmp_path, "icthp_core/diffusion/draft.py", "from icthp_core.scoring import registry\n")
    bad = direction_violations(tmp_path, tiers)
    assert [b.split(": ", 1)[0] for b in bad] == [
        "icthp_core/data/images.py:2",
        "icthp_core/data/outputs.py:1",
        "icthp_core/training/engine.py:1",
    ], bad
    assert set(package_cycles(tmp_path)) == {"data", "scoring"}
    assert direction_violations(REPO, tiers)  # the real tree against a wrong order fails too


def test_evalgen_and_draft_share_the_pipeline_loader():
    """Pipeline loading lives in diffusion/pipelines.py; nothing in the core imports the DRaFT trainer."""
    importers = [f for f in (REPO / "icthp_core").rglob("*.py") if "draft_train" in _module_imports(f)]
    assert [f.name for f in importers] == [], importers
    assert "load_pipeline" in (REPO / "icthp_core" / "diffusion" / "pipelines.py").read_text()


def _module_imports(path: Path) -> set[str]:
    """Last component of every module a file imports (absolute or relative)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.rsplit(".", 1)[-1] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.module:
                names.add(node.module.rsplit(".", 1)[-1])
            names |= {a.name for a in node.names}
    return names


#: the longest a function may be (lines from `def` to its last line, docstring included)
MAX_FUNCTION_LINES = 80
#: functions allowed to be longer, each with its reason (keep it short; the aim is none)
LONG_FUNCTIONS: dict[str, str] = {}


def long_functions(root: Path, folders: list[str], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """`path:qualname (N lines)` of every function or method longer than `limit` lines under `folders`."""
    out = []
    for folder in folders:
        for f in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(f.read_text(), str(f))
            out += _long_in(tree, f"{f.relative_to(root)}:", limit)
    return out


def _long_in(node: ast.AST, prefix: str, limit: int) -> list[str]:
    out = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            n = child.end_lineno - child.lineno + 1
            if not isinstance(child, ast.ClassDef) and n > limit:
                out.append(f"{name} ({n} lines)")
            out += _long_in(child, f"{name}.", limit)
    return out


def test_no_function_over_80_lines():
    """Rooms a person can hold in their head: the core, the CLI, the front ends and the benchmarks."""
    found = long_functions(REPO, ["icthp_core", "icthp_cli", "gradio_app", "comfy_nodes", "bench", "scripts"])
    over = [f for f in found if f.rsplit(" (", 1)[0] not in LONG_FUNCTIONS]
    assert not over, "split these into named phases:\n" + "\n".join(over)
    stale = set(LONG_FUNCTIONS) - {f.rsplit(" (", 1)[0] for f in found}
    assert not stale, f"no longer long, drop from LONG_FUNCTIONS: {sorted(stale)}"


def test_function_length_check_can_fail(tmp_path):
    body = "\n".join(f"    x = {i}" for i in range(81))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        f"class A:\n    def f(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n"
    )
    assert long_functions(tmp_path, ["pkg"]) == ["pkg/m.py:A.f (82 lines)"]


def test_import_icthp_core_is_light():
    code = f"import sys, icthp_core; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.slow
def test_installed_names_and_every_job_in_help(tmp_path):
    """Build the wheel, install it into an empty target folder and run its `icthp --help` away from the checkout."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("icthp-*.whl")
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist() if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"icthp_core", "icthp_cli", "icthp_app"}, tops
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import icthp_cli, icthp_core; print(icthp_core.__file__); icthp_cli.main(['--help'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(str(target))  # the installed copy, not the checkout
    from icthp_cli.main import COMMANDS

    for job in ["score", "metrics", "eval", "app", "train-ict", "train-hp", "draft"]:
        assert job in {c.name for c in COMMANDS}
    for c in COMMANDS:
        assert re.search(rf"^\s+{re.escape(c.name)}\s", out.stdout, re.M), c.name


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["app", "--help"], ["download", "--help"]])
def test_help_imports_no_torch(argv):
    """`icthp --help` lists the jobs without importing any of them, and a serving job's help needs no torch either
    (fast on a loaded machine; `import icthp_core.errors` is light: the package's public names load on first use)."""
    heavy = ("torch", "open_clip", "numpy")
    code = f"import sys\nfrom icthp_cli.main import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
    code += f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-500:]


def _job_help_argvs() -> list[list[str]]:
    from icthp_cli.main import COMMANDS

    return [[c.name, "--help"] for c in COMMANDS]


@pytest.mark.parametrize("argv", _job_help_argvs(), ids=lambda a: a[0])
def test_every_job_help_imports_no_torch(argv):
    """`icthp JOB --help` builds the job's parser from light modules only (config dataclasses, method names): no
    torch, open_clip, transformers or diffusers, so help and a mistyped option answer in a fraction of a second."""
    heavy = ("torch", "open_clip", "transformers", "diffusers")
    code = f"import sys\nfrom icthp_cli.main import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
    code += f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert f"usage: icthp {argv[0]}" in out.stdout, out.stdout[-500:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-500:]


#: `icthp score` runs a user error stops before any model loads: (argv, words of its one line); {d}: a tmp folder
EARLY_ERRORS = {
    "unwritable-output": (["score", "--prompt", "x", "{d}", "-o", "{d}/file.txt/out.jsonl"], "cannot be written"),
    "unknown-metric": (["score", "--metrics", "ict,nope", "--prompt", "x", "{d}"], "unknown metric"),
    "resume-without-output": (["score", "--ict", "{d}/nope", "--prompt", "x", "{d}", "--resume"], "--output"),
    "ray-option-on-local": (["score", "--prompt", "x", "{d}", "--actors", "2"], "--actors"),
}


@pytest.mark.parametrize(("argv", "words"), EARLY_ERRORS.values(), ids=EARLY_ERRORS)
def test_score_user_errors_answer_before_any_model_code(argv, words, tmp_path):
    """A mistyped `icthp score` answers with its one line (exit 2) without importing torch, open_clip or
    transformers: the registry, plan and output checks are light, so the answer comes in a fraction of a second."""
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # never opened: the run stops before
    argv = [a.replace("{d}", str(tmp_path)) for a in argv]
    heavy = ("torch", "open_clip", "transformers")
    code = f"import sys\nfrom icthp_cli.main import main\nrc = main({argv!r})\n"
    code += f"print(rc, sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-800:]
    assert out.stdout.strip().splitlines()[-1] == "2 []", (out.stdout[-500:], out.stderr[-500:])
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("icthp score: ") and words in line, line


def test_every_command_resolves():
    from icthp_cli.main import COMMANDS, build_parser

    for c in COMMANDS:
        parser, module = build_parser(c.name)
        assert parser.prog == f"icthp {c.name}" and callable(module.run), c.name


def _resolve_dotted(name: str) -> object:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


def core_api_names() -> list[tuple[str, str]]:
    """(module, name) for every API entry of docs/core_api.md: dotted `icthp_core.x.y` references, and the
    `- \\`name(` bullets of each section (in the section's module named in its heading, else `icthp_core`)."""
    out, module = [], "icthp_core"
    for line in (REPO / "docs" / "core_api.md").read_text().splitlines():
        if line.startswith("## "):
            modules = re.findall(r"`(icthp_core[\w.]*)`", line.partition("(")[2])
            module = ",".join(modules) or "icthp_core"
        for dotted in re.findall(r"`(icthp_core(?:\.\w+)+)", line):
            out.append(("", dotted))
        m = re.match(r"-\s+`(?:(icthp_core(?:\.\w+)*)\.)?(\w+)[(`\s]", line)
        if m and not m.group(1):
            out.append((module, m.group(2)))
    return out


def test_core_api_doc_names_exist():
    names = core_api_names()
    assert len(names) > 15
    missing = []
    for modules, name in names:
        candidates = [f"{m}.{name}" for m in modules.split(",")] if modules else [name]
        found = False
        for dotted in candidates:
            try:
                _resolve_dotted(dotted)
                found = True
            except (ImportError, AttributeError):
                pass
        if not found:
            missing.append(candidates[0])
    assert not missing, f"docs/core_api.md names what does not exist: {missing}"
