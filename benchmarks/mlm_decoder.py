"""Benchmark (b): masked-positions-only MLM decoder vs the full-logits path on MiniLM.

The same batches (same masks) go through both paths: the losses must agree, and the step times show what
skipping the 30k-vocabulary decoder at unmasked positions saves.

    .venv/bin/python benchmarks/mlm_decoder.py [--batch-size 16 --max-length 128 --steps 5]
"""

from __future__ import annotations

import argparse
import copy

import torch
from _common import median_seconds, minilm_and_corpus

from fedbt.training.loop import adamw
from fedbt.training.objectives import make_objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    model, tokenizer, examples = minilm_and_corpus(args.max_length, args.batch_size * args.steps)
    paths = {
        name: make_objective("mlm", tokenizer, max_length=args.max_length, padding="fixed", masked_only=masked)
        for name, masked in (("masked-only", True), ("full-logits", False))
    }
    batch = paths["masked-only"].collate(examples[: args.batch_size], torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.eval()
        losses = {name: objective.loss(model, batch).item() for name, objective in paths.items()}
    print(f"loss on the same masked batch: {losses}  |diff| = {abs(losses['masked-only'] - losses['full-logits']):.2e}")

    times = {}
    for name, objective in paths.items():
        local = copy.deepcopy(model).train()
        optimizer = adamw(local, 5e-5, 0.01)

        def step(local=local, objective=objective, optimizer=optimizer) -> None:
            objective.loss(local, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # warm-up
        times[name] = median_seconds(step, args.steps)
    print(f"MiniLM train step, batch {args.batch_size} x {args.max_length} tokens, {torch.get_num_threads()} threads:")
    for name, seconds in times.items():
        print(f"  {name:12s} {seconds:.3f} s/step")
    print(f"speed-up masked-only vs full-logits = {times['full-logits'] / times['masked-only']:.2f}x")


if __name__ == "__main__":
    main()
