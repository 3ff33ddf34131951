"""Console entry point: `zoo data ...` is dispatched before Lightning is imported (fast)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "data":
        from zoo.data_cli import data_main

        return data_main(args[1:])
    if args and args[0] in ("reproduce", "ablate"):
        from zoo.reproduce_cli import main as reproduce_main

        return reproduce_main(args)
    if args and args[0] == "tune":
        from zoo.experiments.tune import main as tune_main

        return tune_main(args[1:])
    from zoo.cli import main as cli_main

    return cli_main(argv)
