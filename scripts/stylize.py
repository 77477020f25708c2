#!/usr/bin/env python
"""``stylenet-stylize`` from a checkout, without installing: ``python scripts/stylize.py --help``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylenet.cli.stylize import main

if __name__ == "__main__":
    sys.exit(main())
