"""Speed benchmark from a checkout, not installed: the same as ``stylenet-bench``; see stylenet/cli/bench.py.

    python scripts/benchmark.py --json outputs/bench.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylenet.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
