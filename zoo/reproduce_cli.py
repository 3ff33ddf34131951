"""``zoo reproduce`` / ``zoo ablate``: the paper-table runner (``zoo/experiments/reproduce.py``,
``zoo/experiments/ablate.py``), reachable from the console script."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    """``argv[0]`` is ``reproduce`` or ``ablate``; the rest are that command's flags."""
    if argv[0] == "reproduce":
        from zoo.experiments.reproduce import main as run
    else:
        from zoo.experiments.ablate import main as run
    return run(argv[1:])
