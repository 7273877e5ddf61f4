"""Every block of the README a user may paste is run by a test, or says why not.

See :mod:`tests.readme` for the marks. This checks the marks themselves: a
block without one, a ``run:`` mark no test asks for, or Python that does
not even parse fails here, without a cluster.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.readme import CHECKED_LANGUAGES, Block, blocks, normalise, session

TESTS = Path(__file__).resolve().parent.parent
ASKED = re.compile(r"""block\(\s*["']([\w-]+)["']\s*\)""")


def _asked_for() -> set[str]:
    found: set[str] = set()
    for path in TESTS.rglob("*.py"):
        found |= set(ASKED.findall(path.read_text()))
    return found


CHECKED = [b for b in blocks() if b.language in CHECKED_LANGUAGES]


def _id(b: Block) -> str:
    return f"line{b.line}-{b.language}"


@pytest.mark.parametrize("b", CHECKED, ids=_id)
def test_each_block_is_run_or_says_why_not(b: Block) -> None:
    assert b.mark is not None, f"README.md:{b.line}: add <!-- run: ID --> or <!-- not run: why -->"
    if b.mark == "run":
        assert b.label in _asked_for(), f"README.md:{b.line}: no test asks for block({b.label!r})"
    else:
        assert b.label is not None
        assert len(b.label) > 10, "say why the block is not run"


def test_run_marks_are_unique() -> None:
    labels = [b.label for b in blocks() if b.mark == "run"]
    assert len(labels) == len(set(labels)), labels


@pytest.mark.parametrize("b", [b for b in CHECKED if b.language == "python"], ids=_id)
def test_python_blocks_parse(b: Block) -> None:
    ast.parse(b.text)


def test_the_parser_reads_sessions_and_shapes() -> None:
    steps = session("$ a \\\n  b\nout 1\n$ c\n")
    assert [(s.command, s.output) for s in steps] == [("a \\\n  b", ["out 1"]), ("c", [])]
    assert normalise("node1  127.0.0.1:20282  up   0.045s 0/40001B8") == (
        "node1 <n>.<n>:<n> up <n>s <lsn>"
    )
    assert normalise("2026-11-25T22:09:56+00:00 lab in /tmp/pgfailover-lab-0") == (
        "<time> lab in <path>"
    )
