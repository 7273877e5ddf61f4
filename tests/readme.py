"""The README's code blocks, so that tests run what users paste.

Every ``python``, ``toml`` and ``console`` block in ``README.md`` carries an
HTML comment on the line before its fence, invisible on the rendered page:

- ``<!-- run: ID -->``: a test runs this block; it asks for it with
  :func:`block` (``block("ID")``), and ``tests/unit/test_readme_blocks.py``
  checks that some test does;
- ``<!-- not run: why -->``: illustrative, with the reason (a server that
  runs forever, files under ``/etc``...).

Console blocks are sessions: a line starting with ``$ `` is a command (a
trailing ``\\`` continues it), the lines after it are its output.
:func:`session` splits them; :func:`normalise` turns an output line into
the shape that must match (numbers, LSNs, times and paths vary by run).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
CHECKED_LANGUAGES = ("python", "toml", "console")

_MARK = re.compile(r"<!--\s*(run|not run):\s*(.+?)\s*-->")


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    language: str
    text: str
    line: int  # of the opening fence, 1-based
    mark: str | None  # "run" or "not run"
    label: str | None  # the ID, or the reason


def blocks(path: Path = README) -> list[Block]:
    """Every fenced block, in order."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            language = lines[i][3:].strip()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            previous = lines[i - 1] if i else ""
            mark = _MARK.fullmatch(previous.strip())
            found.append(
                Block(
                    language=language,
                    text="\n".join(lines[i + 1 : end]) + "\n",
                    line=i + 1,
                    mark=mark.group(1) if mark else None,
                    label=mark.group(2) if mark else None,
                )
            )
            i = end + 1
        else:
            i += 1
    return found


def block(ident: str) -> str:
    """The text of the block marked ``<!-- run: ident -->``."""
    matches = [b for b in blocks() if b.mark == "run" and b.label == ident]
    if len(matches) != 1:
        raise LookupError(f"README.md has {len(matches)} blocks marked 'run: {ident}'")
    return matches[0].text


@dataclass
class Step:
    """One command of a console session and the output the README shows for it."""

    command: str
    output: list[str] = field(default_factory=list)


def session(text: str) -> list[Step]:
    """The commands of a console block, with their shown output."""
    steps: list[Step] = []
    continued = False
    for line in text.splitlines():
        if continued:
            steps[-1].command += "\n" + line
            continued = line.endswith("\\")
        elif line.startswith("$ "):
            steps.append(Step(line[2:]))
            continued = line.endswith("\\")
        elif steps:
            steps[-1].output.append(line)
    return steps


_SHAPES = [
    (re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+[+-]\d\d:\d\d"), "<time>"),
    (re.compile(r"\b[0-9A-F]+/[0-9A-F]+\b"), "<lsn>"),
    (re.compile(r"(/[\w.-]+)+/?"), "<path>"),
    (re.compile(r"(?<![A-Za-z_])\d+(\.\d+)?"), "<n>"),  # not in node0
    (re.compile(r"\s+"), " "),
]


def normalise(line: str) -> str:
    """A line's shape: times, LSNs, paths and numbers replaced, spaces collapsed."""
    for pattern, shape in _SHAPES:
        line = pattern.sub(shape, line)
    return line.strip()
