"""Benchmark (i): AdamW's fused CPU kernel vs PyTorch's per-tensor loop in MiniLM FedAvg local training.

``local.fused_optimizer: true`` makes every client's AdamW fused on CPU (CUDA always is). This trains a copy of
the same MiniLM on the same batches, dropout and masks (``fedbt.training.loop.train``, all parameters trainable as
in FedAvg, one thread) with each optimizer, alternating, and prints per setting the median CPU seconds per step,
the ratio, and how far the two runs end apart (the mean losses and the largest parameter difference: the update is
AdamW's either way, only float rounding differs).

    .venv/bin/python benchmarks/optimizer_kernel.py [--steps 32 --repeats 3 --batch-size 4 --max-length 32]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from _common import minilm_and_corpus

from fedbt.training.loop import adamw, train
from fedbt.training.objectives import make_objective

KERNELS = {"loop": False, "fused": True}
"""Setting name -> ``fused_on_cpu``."""


def train_once(model, objective, examples, args: argparse.Namespace, fused: bool):
    """(trained copy of ``model``, its TrainResult) after ``args.steps`` steps with seeded batches and dropout."""
    local = copy.deepcopy(model)
    torch.manual_seed(0)
    result = train(
        local,
        objective,
        examples,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=3e-4,
        weight_decay=0.01,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        optimizer=adamw(local, 3e-4, 0.01, fused_on_cpu=fused),
    )
    return local, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=32)
    args = parser.parse_args()

    model, tokenizer, examples = minilm_and_corpus(args.max_length, args.batch_size * args.steps, threads=1)
    objective = make_objective("mlm", tokenizer, max_length=args.max_length)
    seconds = {name: [] for name in KERNELS}
    trained, losses = {}, {}
    for _ in range(args.repeats):
        for name, fused in KERNELS.items():
            trained[name], result = train_once(model, objective, examples, args, fused)
            seconds[name].append(result.seconds / args.steps)
            losses[name] = result.mean_loss
    fused_params = dict(trained["fused"].named_parameters())
    max_diff = max((p - fused_params[n]).abs().max().item() for n, p in trained["loop"].named_parameters())

    print(f"MiniLM FedAvg local steps, batch {args.batch_size} x {args.max_length} tokens, 1 thread, CPU seconds:")
    for name, values in seconds.items():
        print(f"  {name:5s} {statistics.median(values):.3f} s/step (median of {args.repeats} x {args.steps} steps)")
    ratio = statistics.median(seconds["fused"]) / statistics.median(seconds["loop"])
    print(f"fused / loop = {ratio:.2f}x")
    print(
        f"after {args.steps} steps: mean loss loop {losses['loop']:.6f}, fused {losses['fused']:.6f}; "
        f"largest parameter difference {max_diff:.2e}"
    )


if __name__ == "__main__":
    main()
