"""``zoo ckpt convert --trust-pickle IN OUT``: a weights-only copy of a pickled file you trust.

The zoo reads every checkpoint and feature file with ``torch.load(weights_only=True)``; a legacy
file that stores other Python objects (a pickled ``Namespace`` in the hyper-parameters, a
numpy array, a custom class) is refused.  This command unpickles such a file ONCE, in full --
which runs any code inside it, hence the mandatory ``--trust-pickle`` -- and writes ``OUT``
(atomically, never over an existing file) holding only tensors, numbers, strings and containers.
"""

from __future__ import annotations

import argparse
import sys


def ckpt_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo ckpt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    conv = sub.add_parser("convert", help="write a weights-only copy of a trusted pickled checkpoint/feature file")
    conv.add_argument("--trust-pickle", action="store_true",
                      help="required: you trust IN's origin (unpickling it runs any code it holds)")
    conv.add_argument("src", metavar="IN")
    conv.add_argument("dst", metavar="OUT", help="new file (.ckpt/.pt: torch.save; .npy: numpy float32)")
    args = parser.parse_args(argv)
    if not args.trust_pickle:
        print("zoo: error (ckpt convert): unpickling IN can run arbitrary code; pass --trust-pickle to confirm "
              "that you trust where the file came from", file=sys.stderr)
        return 2
    from zoo.safe_load import convert_trusted

    try:
        dropped = convert_trusted(args.src, args.dst)
    except (OSError, ValueError, TypeError) as e:
        print(f"zoo: error ({type(e).__name__}): {e}", file=sys.stderr)
        return 1
    print(f"[zoo] wrote weights-only copy {args.dst} of {args.src}")
    for d in dropped:
        print(f"[zoo]   not a tensor/number/string, kept as its repr: {d}")
    return 0
