"""``zoo`` with :class:`benchmarks.speed_timer.PhaseTimer` attached: the real CLI, one callback more.

    ZOO_SPEED_OUT=/tmp/t.json python -m benchmarks.zoo_timed fit --config recipes/sasrec.yaml ...

The zoo's ``ZooCLI.instantiate_trainer`` passes its own ``callbacks`` to Lightning, which replaces
(not extends) ``--trainer.callbacks`` from the command line or recipe; so the timer is handed in
the same way as the zoo's own callbacks instead (see the report of issue 7 for the CLI fix).
"""

from __future__ import annotations

import sys

from benchmarks.speed_timer import PhaseTimer


def main(argv: list[str] | None = None) -> int:
    from zoo.cli import ZooCLI
    from zoo.entry import main as zoo_main

    original = ZooCLI.instantiate_trainer

    def with_timer(self, **kwargs):
        kwargs["callbacks"] = [PhaseTimer()] + list(kwargs.get("callbacks") or [])
        return original(self, **kwargs)

    ZooCLI.instantiate_trainer = with_timer
    return zoo_main(argv)


if __name__ == "__main__":
    sys.exit(main())
