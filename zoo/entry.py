"""Console entry point ``zoo``: one registry of subcommands, each imported only when it runs.

``zoo --help``, ``zoo models``, ``zoo recipes`` and ``zoo data stats`` import neither torch nor
Lightning; ``fit/validate/test/predict`` first run the recipe pre-check (``zoo/precheck.py``, no
torch) and then LightningCLI.  To add a subcommand, add one line to ``COMMANDS``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str  # imported only when the command runs
    function: str  # called with the arguments after the command name (LIGHTNING: zoo.cli.main(argv))
    description: str  # one line for `zoo --help`


LIGHTNING = ("fit", "validate", "test", "predict")  # LightningCLI subcommands: recipe pre-check first

COMMANDS: dict[str, Command] = {
    "fit": Command("zoo.cli", "main", "train a recipe (best/last checkpoints, early stopping), then test the best checkpoint"),
    "validate": Command("zoo.cli", "main", "evaluate a checkpoint on the validation split"),
    "test": Command("zoo.cli", "main", "evaluate a checkpoint on the test split: metrics and per-user ranks"),
    "predict": Command("zoo.cli", "main", "write every test user's top-K items (the publisher's ids) to a CSV"),
    "data": Command("zoo.data_cli", "data_main", "prepare a dataset's processed cache, or print a cache's summary"),
    "reproduce": Command("zoo.experiments.reproduce", "main", "re-run a paper's result table (--dry-run: the plan)"),
    "ablate": Command("zoo.experiments.ablate", "main", "run a paper's ablation rows (--dry-run: the plan)"),
    "compare": Command("zoo.experiments.compare", "main", "compare runs: metrics with CIs, paired tests over users"),
    "tune": Command("zoo.experiments.tune", "main", "hyper-parameter search with Optuna over a recipe's tune: block"),
    "models": Command("zoo.catalog", "models_main", "list the models: paper, venue, recipes, default protocol"),
    "recipes": Command("zoo.catalog", "recipes_main", "list the recipes: stage, model, data, protocol"),
    "ckpt": Command("zoo.ckpt_cli", "ckpt_main", "convert a trusted pickled checkpoint to a weights-only copy"),
}


def _available(cmd: Command) -> bool:
    try:
        return importlib.util.find_spec(cmd.module) is not None
    except (ImportError, ValueError):  # a parent package is missing
        return False


def available_commands() -> dict[str, Command]:
    """The registry without the commands whose module is not part of this installation."""
    return {name: cmd for name, cmd in COMMANDS.items() if _available(cmd)}


def usage() -> str:
    cmds = available_commands()
    width = max(len(n) for n in cmds) + 2
    lines = [
        "usage: zoo <command> [options]",
        "",
        "A PyTorch Lightning model zoo for multi-interest and pre-trained sequential recommendation.",
        "",
        "commands:",
        *(f"  {name:<{width}}{cmd.description}" for name, cmd in cmds.items()),
        "",
        "`zoo <command> --help` lists a command's options (fit/validate/test/predict: LightningCLI's, e.g.",
        "`zoo fit --config recipes/sasrec.yaml --help`); docs/cli.md describes every command.",
    ]
    return "\n".join(lines)


def _precheck(name: str, args: list[str]) -> int | None:
    """A recipe mistake found before torch is imported: print it like zoo.cli does, return 2."""
    if os.environ.get("ZOO_DEBUG"):
        return None  # the full parse gives the full traceback
    from zoo.precheck import RecipeError, check

    try:
        check(name, args)
    except RecipeError as e:
        print(f"zoo: error (recipe): {e}\n(set ZOO_DEBUG=1 for the full traceback)", file=sys.stderr)
        return 2
    return None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name = args[0]
    cmds = available_commands()
    if name not in cmds:
        if name.startswith("-"):  # LightningCLI's own top-level options (e.g. --print_config)
            from zoo.cli import main as cli_main

            return cli_main(argv)
        import difflib

        close = difflib.get_close_matches(name, list(cmds), n=1)
        hint = f"; did you mean `zoo {close[0]}`?" if close else ""
        print(f"zoo: error: unknown command '{name}'{hint} (`zoo --help` lists the commands)", file=sys.stderr)
        return 2
    cmd = cmds[name]
    if name in LIGHTNING:
        rc = _precheck(name, args[1:])
        if rc is not None:
            return rc
    fn = getattr(importlib.import_module(cmd.module), cmd.function)
    if name in LIGHTNING:
        return fn(argv)  # None: LightningCLI reads sys.argv itself, as before
    try:
        return fn(args[1:])
    except BrokenPipeError:  # `zoo recipes | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
