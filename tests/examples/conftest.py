from __future__ import annotations

# The dashboard's headless-Chromium fixtures, shared rather than rebuilt.
from ..integration.test_dashboard import browser as browser
from ..integration.test_dashboard import chromium as chromium
