"""The docs site: every Python code block of every page runs (the blocks of one page in order,
in one namespace, as a reader would paste them), and the site builds with `--strict`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
PAGES = sorted(DOCS.glob("*.md"))
WITH_CODE = [p for p in PAGES if BLOCK.search(p.read_text())]


def test_every_page_is_in_the_navigation_and_most_have_runnable_code() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    assert PAGES and all(f" {page.name}" in nav for page in PAGES)
    assert len(WITH_CODE) >= 6


@pytest.mark.parametrize("page", WITH_CODE, ids=[p.stem for p in WITH_CODE])
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = page.read_text()
    monkeypatch.chdir(tmp_path)  # blocks create SQLite files where they run
    name = f"docs_{page.stem.replace('-', '_')}"
    module = types.ModuleType(name)  # a real module, as a reader's file would be
    monkeypatch.setitem(sys.modules, name, module)
    for block in BLOCK.finditer(text):  # each at its own line, so errors point into the page
        padding = "\n" * text.count("\n", 0, block.start(1))
        exec(compile(padding + block.group(1), str(page), "exec"), module.__dict__)


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=os.path.dirname(sys.executable))
    if mkdocs is None:
        message = "mkdocs is not installed (the test extra installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    result = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "steps" / "index.html").exists()
