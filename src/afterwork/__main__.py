from __future__ import annotations

from ._cli_worker import main

main()
