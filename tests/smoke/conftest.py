"""The smoke tier reuses the loopback harness of ``tests/integration``.

``harness`` and ``appserver`` live there as top-level modules (that directory has
no ``__init__.py``); pytest puts it on ``sys.path`` only when it collects
``tests/integration`` itself, so this conftest adds it for a run of
``tests/smoke`` alone (``make test-other-pythons`` runs ``pytest tests/smoke``).
"""

from __future__ import annotations

import sys
from pathlib import Path

INTEGRATION = str(Path(__file__).resolve().parent.parent / "integration")
if INTEGRATION not in sys.path:
    sys.path.insert(0, INTEGRATION)
