"""The dependency floors stay above the releases with known advisories (docs/api.md)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FLOORS = {"fastapi": (0, 121, 2), "starlette": (0, 49, 1)}


def test_fastapi_and_starlette_floors_exclude_advised_releases() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors: dict[str, tuple[int, ...]] = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([a-z-]+)>=([0-9.]+)", requirement.replace(" ", ""))
        if match:
            floors[match[1]] = tuple(int(part) for part in match[2].split("."))
    for name, minimum in FLOORS.items():
        assert name in floors, f"{name} needs a floor"
        assert floors[name] >= minimum, (name, floors[name])
    docs = (ROOT / "docs" / "api.md").read_text()
    for advisory in ("CVE-2025-62727", "CVE-2025-54121", "CVE-2024-47874", "CVE-2024-24762"):
        assert advisory in docs
