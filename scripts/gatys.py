"""``stylenet-gatys`` from a checkout, not installed: ``python scripts/gatys.py content=... styles=...``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylenet.cli.gatys import main

if __name__ == "__main__":
    main()
