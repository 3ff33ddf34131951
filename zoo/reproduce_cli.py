"""``zoo reproduce`` / ``zoo ablate``: the paper-table benchmarks (``benchmarks/reproduce.py``,
``benchmarks/ablate.py``), reachable from the console script.  They need a source checkout (the
recipes and ``benchmarks/`` live beside the package), which is how the zoo is installed (``pip install -e``)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    """``argv[0]`` is ``reproduce`` or ``ablate``; the rest are that command's flags."""
    if not (ROOT / "benchmarks" / "reproduce.py").is_file():
        print(f"zoo {argv[0]}: needs a source checkout (benchmarks/ not found beside {ROOT / 'zoo'})", file=sys.stderr)
        return 2
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if argv[0] == "reproduce":
        from benchmarks.reproduce import main as run
    else:
        from benchmarks.ablate import main as run
    return run(argv[1:])
