"""``fedbt distill``: build a distilled student offline (the ``distill`` baseline's default student).

Heavy imports (torch, transformers) happen inside :func:`main`, so that ``fedbt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys

from fedbt.errors import FedBTError

EXIT_ERROR = 2


def parse_layers(text: str) -> tuple[int, ...]:
    """``"0,2,4"`` -> ``(0, 2, 4)``."""
    try:
        return tuple(int(item) for item in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected comma-separated layer indices like 0,2,4") from error


def add_parser(subparsers) -> None:
    """Register ``distill`` and its flags on an argparse ``subparsers`` object."""
    parser = subparsers.add_parser(
        "distill",
        help="build a distilled student (shallower copy of chosen teacher layers) on a general-domain corpus",
        description=(
            "Initialise a student from chosen teacher layers (embeddings and MLM head copied), distil it from the "
            "frozen teacher (soft-target KL on MLM logits + hidden-state MSE at the mapped layers) on a corpus "
            "shipped in data/, and save it with distill_costs.json (seconds, FLOPs, steps). Use the output "
            "directory as method.options.student of the distill baseline."
        ),
    )
    parser.add_argument("--teacher", default="minilm", help="teacher model: minilm, tiny, a local path or hub id")
    parser.add_argument("--layers", type=parse_layers, required=True, help="teacher layers to keep, e.g. 0,2,4")
    parser.add_argument("--corpus", default="sst2", help="sst2 (general domain, default) or a domain corpus (cs, ...)")
    parser.add_argument("--out", required=True, help="output directory of the student checkpoint")
    parser.add_argument("--data-dir", default="data", help="the shipped data folder")
    parser.add_argument("--max-examples", type=int, help="use at most this many sentences")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per sentence (truncated, padded)")
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over the corpus (unless --steps)")
    parser.add_argument("--steps", type=int, help="optimizer steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=2.0, help="softmax temperature of the soft targets")
    parser.add_argument("--hidden-weight", type=float, default=1.0, help="weight of the hidden-state MSE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    """Build the student and print its costs as JSON; errors go to stderr with exit status 2."""
    from fedbt.distill import DistillSettings, distill_student

    settings = DistillSettings(
        teacher=args.teacher,
        layers=args.layers,
        corpus=args.corpus,
        data_dir=args.data_dir,
        max_examples=args.max_examples,
        max_length=args.max_length,
        epochs=args.epochs,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        hidden_weight=args.hidden_weight,
        seed=args.seed,
        device=args.device,
    )
    try:
        costs = distill_student(settings, args.out)
    except FedBTError as error:
        print(f"fedbt distill: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps({"out": args.out, **costs}, indent=1))
    return 0
