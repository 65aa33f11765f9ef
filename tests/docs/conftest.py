"""The pages in docs/ show code from examples/docs/ and from these tests; keep them equal."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(page: str) -> list[str]:
    """The ```python blocks of ``docs/<page>``."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def assert_blocks_are_code(page: str, *sources: Path) -> None:
    """Every python block of the page appears verbatim (at some indentation) in a source."""
    texts = [source.read_text(encoding="utf-8") for source in sources]
    blocks = python_blocks(page)
    assert blocks, f"docs/{page} shows no code"
    for block in blocks:
        block = textwrap.dedent(block)
        found = any(
            textwrap.indent(block, " " * level) in text for text in texts for level in (0, 4, 8)
        )
        assert found, f"this block of docs/{page} is not in {[s.name for s in sources]}:\n{block}"
