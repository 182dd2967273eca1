"""Fenced code blocks of the user-facing docs, with the marker comment that may precede each one."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHELL = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
MARKER = re.compile(r"<!--\s*docs-test:\s*(skip|run)\b\s*(?:\((.*)\))?\s*-->")


@dataclass
class Block:
    file: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None  # "skip" | "run" | None
    reason: str

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    """README.md, docs/*.md, comfy_nodes/README.md, examples/*/README.md."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "comfy_nodes" / "README.md"]
    return files + sorted((ROOT / "examples").glob("*/README.md"))


def blocks(path: Path) -> list[Block]:
    """Every fenced block of `path`; the marker is an HTML comment on one of the two lines above the fence."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        body = "\n".join(x[len(indent) :] if x.startswith(indent) else x for x in lines[i + 1 : j])
        above = " ".join(lines[max(0, i - 2) : i])
        mk = MARKER.search(above)
        out.append(Block(path, i + 1, lang, body, mk.group(1) if mk else None, (mk.group(2) or "") if mk else ""))
        i = j + 1
    return out


_COMMAND = re.compile(r"^\s*(?:[A-Z_]+=\S+\s+)*(?:python|bash|icthp|accelerate|hf|pip|cd|git)\b")


def is_shell(b: Block) -> bool:
    """A shell block: tagged bash/sh/shell/console, or untagged with a command on its first line."""
    if b.lang in SHELL:
        return True
    first = next((x for x in b.text.splitlines() if x.strip() and not x.lstrip().startswith("#")), "")
    return b.lang == "" and bool(_COMMAND.match(first))


def all_blocks() -> list[Block]:
    """Every shell and Python block of the user-facing docs."""
    return [b for f in doc_files() for b in blocks(f) if is_shell(b) or b.lang == "python"]
