"""Contracts of the layout: layers never point upward, `import icthp_core` stays light, the installed wheel has no
generic top-level name and `icthp --help` lists every job, and docs/core_api.md names only things that exist."""

from __future__ import annotations

import ast
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
#: TRANSITIONAL: core files whose argparse moves out with `icthp score` (issue 19 point 3, the score helper)
PENDING_SCORE = {"icthp_core/scale/score_cmd.py", "icthp_core/data/sources.py"}


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
        if rel in PENDING_SCORE:
            continue
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
    from icthp_cli.main import COMMANDS, LEGACY

    assert set(LEGACY) <= {"score"}, LEGACY  # TRANSITIONAL: only score waits for its conversion
    for c in COMMANDS:
        assert c.module.startswith("icthp_cli."), c
        path = REPO / (c.module.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text(), str(path))
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        if c.name not in LEGACY:
            assert {"add_arguments", "run"} <= functions, f"{path.relative_to(REPO)} lacks add_arguments/run"


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


def test_icthp_help_imports_no_torch():
    """`icthp --help` lists the jobs without importing any of them (no torch: fast on a loaded machine)."""
    heavy = ("torch", "icthp_core", "numpy")
    code = "import sys; from icthp_cli.main import main; main(['--help']); "
    code += f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_every_command_resolves():
    from icthp_cli.main import COMMANDS, LEGACY, build_parser, run_legacy

    for c in COMMANDS:
        if c.name in LEGACY:
            assert callable(run_legacy), c.name
        else:
            parser, module = build_parser(c.name)
            assert callable(module.run), c.name


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
