"""Training throughput: tokens/s and model FLOP utilisation, fixed vs dynamic padding side by side in one run.

Models (random weights, ``scratch:``): a MiniLM-shaped (6 x 384) and a bert-base-shaped (12 x 768) BERT, masked LM
(15 %, masked positions only) on the real sentence lengths of the shipped corpora (cs, medicine, biology) at
``--max-length`` 128. Each configuration trains ``--steps`` timed steps after ``--warmup`` steps through the suite's
own loop (:func:`fedbt.training.loop.train`): fixed padding pads every batch to 128; dynamic padding pads each batch to
its longest sequence, batches grouped by length. Seconds are the loop's compute seconds (CUDA: synchronised device
time; CPU: the process's CPU time over all its threads, which other jobs on the machine do not inflate the way they
inflate wall time). Reported per configuration: real (non-padding) tokens/s, the
analytic FLOPs of the steps' actual shapes per second (TFLOP/s) and, given the device's peak (``--peak-tflops``;
known for H100/H200), MFU. The bert-base dynamic-padding TFLOP/s is saved to ``results/benchmarks/throughput.json``
for this device: ``fedbt estimate`` uses it as the default sustained throughput.

    python benchmarks/throughput.py                      # CPU here; on a GPU: bf16 autocast, TF32, SDPA, fused AdamW
    python benchmarks/throughput.py --steps 50 --batch-size 64 --compile
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedbt.config import ModelConfig  # noqa: E402
from fedbt.costs import analytic_train_flops  # noqa: E402
from fedbt.data.corpus import load_corpus  # noqa: E402
from fedbt.estimate import THROUGHPUT_FILE  # noqa: E402
from fedbt.federated.method import ClientPlan  # noqa: E402
from fedbt.models import ModelArch, load_model, load_tokenizer  # noqa: E402
from fedbt.training import loop  # noqa: E402
from fedbt.training.objectives import make_objective  # noqa: E402

MODELS = {"minilm": "scratch:minilm", "bert-base": "scratch:bert-base-uncased"}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
"""Dense bf16 peak TFLOP/s by device name fragment (NVIDIA data sheets; SXM parts)."""


def sentences(max_length: int, count: int, tokenizer) -> list[dict]:
    """Tokenised sentences of the shipped corpora, interleaved (the real length mix), truncated to max_length."""
    corpora = [load_corpus(name, "data") for name in ("cs", "medicine", "biology")]
    mixed = [s for group in zip(*corpora, strict=False) for s in group][:count]
    return [{"input_ids": ids} for ids in tokenizer(mixed, truncation=True, max_length=max_length)["input_ids"]]


def measure(model, arch, objective, examples, args, device, group_by_length: bool) -> dict:
    """Warm up, then time ``args.steps`` steps; returns tokens/s and analytic TFLOP/s of the timed steps."""
    plan = ClientPlan(tuple(range(arch.num_layers)), frozenset(arch.names))
    common = {
        "batch_size": args.batch_size,
        "lr": 1e-4,
        "weight_decay": 0.01,
        "device": device,
        "group_by_length": group_by_length,
    }
    loop.train(model, objective, examples, steps=args.warmup, generator=torch.Generator().manual_seed(1), **common)
    result = loop.train(
        model, objective, examples, steps=args.steps, generator=torch.Generator().manual_seed(2), **common
    )
    seconds = result.seconds  # compute seconds: CUDA synchronised time; CPU process time (all threads)
    flops = sum(analytic_train_flops(arch, plan, s, length, p, head="mlm") for length, (s, p) in result.shapes.items())
    positions = sum(s * length for length, (s, _) in result.shapes.items())
    return {
        "tokens_per_s": result.tokens / seconds,
        "tflops": flops / seconds / 1e12,
        "seconds": seconds,
        "padding_share": 1 - result.tokens / positions,
        "peak_memory_mib": result.peak_memory_bytes / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (dynamic shapes)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: no thread spin-waiting counted)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s, for MFU")
    parser.add_argument("--save", default=str(THROUGHPUT_FILE), help="where the bert-base figure is saved ('' none)")
    args = parser.parse_args()

    device = loop.resolve_device(args.device)
    loop.configure_device(device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    name = loop.device_name(device)
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    tokenizer = load_tokenizer(ModelConfig(source="minilm"))
    examples = sentences(args.max_length, args.batch_size * (args.steps + args.warmup) * 8, tokenizer)
    print(
        f"device: {name}; {len(examples)} sentences of the shipped corpora, max_length {args.max_length}, batch "
        f"{args.batch_size}, {args.steps} timed steps"
    )
    results = {}
    for label in args.models:
        model = load_model(ModelConfig(source=MODELS[label], max_length=args.max_length), "mlm", seed=0).to(device)
        if args.compile:
            model.compile(dynamic=True)
        arch = ModelArch.from_model(model)
        for padding in ("fixed", "dynamic"):
            objective = make_objective("mlm", tokenizer, max_length=args.max_length, padding=padding)
            row = measure(model, arch, objective, examples, args, device, group_by_length=padding == "dynamic")
            row["mfu"] = row["tflops"] / peak if peak else None
            results[(label, padding)] = row
            mfu = f", MFU {row['mfu']:.1%}" if peak else ""
            print(
                f"{label:<10} {padding:<8} {row['tokens_per_s']:>10,.0f} tokens/s  {row['tflops']:>8.3f} TFLOP/s"
                f"{mfu}  (padding {row['padding_share']:.0%} of positions, peak {row['peak_memory_mib']:,.0f} MiB)"
            )
        speedup = results[(label, "dynamic")]["tokens_per_s"] / results[(label, "fixed")]["tokens_per_s"]
        print(f"{label:<10} dynamic / fixed tokens/s: {speedup:.2f}x")
    if args.save and ("bert-base", "dynamic") in results:
        path = Path(args.save)
        path.parent.mkdir(parents=True, exist_ok=True)
        row = results[("bert-base", "dynamic")]
        path.write_text(
            json.dumps(
                {
                    "device": name,
                    "sustained_tflops": row["tflops"],
                    "model": "bert-base shape",
                    "padding": "dynamic",
                    "max_length": args.max_length,
                    "batch_size": args.batch_size,
                    "tokens_per_s": row["tokens_per_s"],
                },
                indent=1,
            )
        )
        print(f"saved the bert-base dynamic-padding throughput for `fedbt estimate`: {path}")


if __name__ == "__main__":
    main()
