"""Every ```python block of README.md runs as printed.

Each block is written to a fresh temporary directory and run there with this
interpreter (the repository importable), under a timeout: a plain program
with ``python``, a block that defines tests (``def test_...``) with
``python -m pytest``. A block that is not meant to run (shell commands, log
lines, signatures) uses another fence language (```sh, ```text).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[^\s`]*)\s*$")
TESTS = re.compile(r"^(async )?def test_", re.MULTILINE)
TIMEOUT = 60


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line of the opening fence, code)`` for each ```python block; an
    indented block (in a list item) loses its indentation."""
    blocks: list[tuple[int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, lang, start = opening["indent"], opening["lang"].lower(), i + 1
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        if lang in ("python", "py"):
            code = "\n".join(line.removeprefix(indent) for line in body)
            blocks.append((start, textwrap.dedent(code) + "\n"))
    return blocks


BLOCKS = python_blocks(README.read_text())


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"line{n}" for n, _ in BLOCKS])
def test_block_runs_as_printed(line: int, code: str, tmp_path: Path) -> None:
    if TESTS.search(code):
        path = tmp_path / "test_readme_block.py"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path.name]
    else:
        path = tmp_path / "readme_block.py"
        command = [sys.executable, path.name]
    path.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"README.md line {line}: the block did not finish within {TIMEOUT}s\n"
                    f"{exc.stdout or ''}{exc.stderr or ''}")
    assert done.returncode == 0, (
        f"README.md line {line}: the block exited {done.returncode}\n"
        f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}")


def test_blocks_are_found_with_their_lines() -> None:
    text = "a\n```python\nprint(1)\n```\n- item:\n\n  ```python\n  x = 1\n  ```\n```sh\nls\n```\n"
    assert python_blocks(text) == [(2, "print(1)\n"), (7, "x = 1\n")]
