"""Time and peak memory of every SelfAttention2d backend, as ratios to "bmm" (from a clone).

The measurement lives in the package (``python -m sagan_tutorial.bench_attention``, which the
scaling chapter calls too); this script runs it from the repository without installing.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sagan_tutorial.bench_attention import main

if __name__ == "__main__":
    raise SystemExit(main())
