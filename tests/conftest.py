from __future__ import annotations

import sys
from pathlib import Path

# tests/ helpers (vectors.py, pcs_simulator.py) are imported as plain modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))
