"""The code of the pages in docs/, run by tests/unit/test_docs_examples.py."""

from __future__ import annotations
