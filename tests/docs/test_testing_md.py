"""docs/testing.md: its examples, run (the example suite runs in a pytest of its own)."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import ROOT, assert_blocks_are_code

SUITE = ROOT / "examples/docs/testing_suite"


def test_the_page_shows_the_tested_code() -> None:
    assert_blocks_are_code(
        "testing.md",
        ROOT / "examples/docs/testing_app.py",
        SUITE / "conftest.py",
        SUITE / "test_signup.py",
    )


def test_the_example_suite_passes() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", str(SUITE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
