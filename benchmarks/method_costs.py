"""Benchmark: measured client compute of FedBT methods vs full-model FedAvg on MiniLM (or a ViT), side by side.

For each round of the schedule, one client trains the same data for the same steps under each method's
plan (methods alternate within a round so machine noise hits all equally). Reports measured seconds,
measured FLOPs (torch FlopCounterMode on every step; the seconds include its overhead) and the analytic
prediction (:func:`fedbt.costs.analytic_train_flops`), and the ratios against ``fedavg``.
Pre-training trains masked LM on the CS corpus; fine-tuning trains ChemProt classification. With ``--vit ARCH``
the model is a ViT of that shape (random weights) on the CIFAR-10 images: masked image modelling, or image
classification.

    .venv/bin/python benchmarks/method_costs.py --methods fedavg fedbt [--rounds 5 --steps 6]
    .venv/bin/python benchmarks/method_costs.py --scenario finetune --methods fedavg fedbt-ft --rounds 6
    .venv/bin/python benchmarks/method_costs.py --vit vit:layers=6,hidden=192,heads=3,ffn=768,image=32,patch=4
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from _common import minilm_and_corpus, minilm_and_task, vit_and_images

from fedbt.config import LocalConfig
from fedbt.federated.method import create_method
from fedbt.federated.simulator import SimulationSetup, Simulator
from fedbt.ledger import Ledger
from fedbt.models import ModelArch, sequence_length
from fedbt.training.objectives import make_objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["pretrain", "finetune"], default="pretrain")
    parser.add_argument("--methods", nargs="+", default=["fedavg", "fedbt"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--option", action="append", default=[], help="method option key=value (int values)")
    parser.add_argument("--vit", metavar="ARCH", help="a ViT shape (vit:layers=..,image=..,patch=..) on CIFAR-10")
    args = parser.parse_args()
    options = {k: int(v) for k, v in (o.split("=", 1) for o in args.option)}

    if args.vit:
        head = "mim" if args.scenario == "pretrain" else "image_classification"
        model, tokenizer, examples = vit_and_images(args.vit, head, args.steps * args.batch_size)
        args.max_length = sequence_length(model.config, args.max_length)  # patches + [CLS]
    elif args.scenario == "pretrain":
        model, tokenizer, examples = minilm_and_corpus(args.max_length, args.steps * args.batch_size)
        head = "mlm"
    else:
        model, tokenizer, examples = minilm_and_task("chemprot", args.max_length, args.steps * args.batch_size)
        head = "classification"
    objective = make_objective(
        head, tokenizer, max_length=args.max_length, padding="fixed", patches=args.max_length - 1
    )
    local = LocalConfig(steps=args.steps, batch_size=args.batch_size, lr=5e-5, flop_count_steps=-1)
    setup = SimulationSetup([examples], objective, local, args.rounds, 1.0, "weighted", 0, torch.device("cpu"))
    arch = ModelArch.from_model(model)
    totals = {name: {"seconds": 0.0, "measured": 0, "analytic": 0, "upload": 0} for name in args.methods}
    with tempfile.TemporaryDirectory() as tmp:
        simulators = {}
        for name in args.methods:
            method_options = options if name != "fedavg" else {}
            method = create_method(name, arch, args.rounds, 0, method_options, args.scenario)
            ledger = Ledger(Path(tmp) / f"{name}.csv")
            simulators[name] = Simulator(copy.deepcopy(model), method, setup, ledger, Path(tmp) / name, name)
        simulators[args.methods[0]].train_client(0, 0)  # warm-up
        for round_idx in range(args.rounds):
            for name, simulator in simulators.items():
                _, row = simulator.train_client(round_idx, 0)
                for key, value in (
                    ("seconds", row.seconds),
                    ("measured", row.measured_flops),
                    ("analytic", row.analytic_flops),
                    ("upload", row.upload_bytes),
                ):
                    totals[name][key] += value
    base = totals.get("fedavg")
    print(
        f"{args.vit or 'MiniLM'} {head}, one client, {args.rounds} rounds x {args.steps} steps, batch "
        f"{args.batch_size} x {args.max_length} tokens, {torch.get_num_threads()} threads, "
        f"options {options or 'default'}"
    )
    print(f"{'method':14s} {'seconds':>9s} {'meas. TFLOP':>12s} {'anal. TFLOP':>12s} {'upload MiB':>11s}", end="")
    print("   vs fedavg: seconds  meas. FLOPs  anal. FLOPs  upload" if base else "")
    for name, t in totals.items():
        line = (
            f"{name:14s} {t['seconds']:9.2f} {t['measured'] / 1e12:12.3f} {t['analytic'] / 1e12:12.3f} "
            f"{t['upload'] / 2**20:11.2f}"
        )
        if base:
            line += (
                f"   {t['seconds'] / base['seconds']:17.1%} {t['measured'] / base['measured']:12.1%}"
                f" {t['analytic'] / base['analytic']:12.1%} {t['upload'] / base['upload']:7.2%}"
            )
        print(line)


if __name__ == "__main__":
    main()
