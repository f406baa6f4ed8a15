"""Benchmark: per-tier client FLOPs and upload of every heterogeneous-clients method on bert-base, no weights.

For each method, client 0 is planned as a client of each resource tier (`fedbt costs --tiers`, on the meta device)
over the paper's rounds: analytic training FLOPs and upload per client-round, and their ratios to full-model FedAvg
(every client training the whole model), side by side; the last column is the mix of the tiers at their shares.
Pre-training: MLM head, 5 rounds; fine-tuning (``--scenario finetune``): token classification, 10 rounds.
Deterministic: the figures depend on the shapes and plans only.

    .venv/bin/python benchmarks/tier_costs.py [--scenario finetune] [--tiers '[{share: 0.5, local_layers: 4}, ...]']
"""

from __future__ import annotations

import argparse

from fedbt import paper
from fedbt.cli_costs import parse_tiers
from fedbt.costs import MB, cost_table

TIERS = (
    "[{name: weak, share: 0.5, local_layers: 4}, {name: mid, share: 0.3, local_layers: 8}, "
    "{name: strong, share: 0.2, local_layers: 12}]"
)
METHODS = {
    "pretrain": ["fedavg", "fedavg-drop-weak", "fedprox", "fedadam", "heterofl", "inclusivefl", "fedbt"],
    "finetune": ["fedavg", "fedavg-drop-weak", "fedprox", "fedadam", "heterofl", "inclusivefl", "fedbt-ft"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["pretrain", "finetune"], default="pretrain")
    parser.add_argument("--arch", default=paper.BASE_ARCH)
    parser.add_argument("--tiers", default=TIERS)
    args = parser.parse_args()
    tiers = parse_tiers(args.tiers)
    rounds, head = paper.ROUNDS[args.scenario], paper.HEAD[args.scenario]
    names = [t.name for t in tiers]
    print(f"{args.arch}, {head} head, {rounds} rounds, 256 sequences of 128 tokens per client and round")
    print(f"tiers: {args.tiers}")
    print(
        f"{'method':<17}"
        + "".join(f"  {n + ' GFLOPs':>13}  {n + ' upload MB':>16}" for n in names)
        + "  mix FLOPs %  mix upload %"
    )
    for method in METHODS[args.scenario]:
        table = cost_table(args.arch, method, rounds, {}, head=head, tiers=tiers)
        cells = ""
        for tier in table["tiers"]:
            total = tier["total"]
            cells += f"  {total['analytic_flops'] / rounds / 1e9:>13,.0f}  {total['upload_bytes'] / rounds / MB:>16.1f}"
        flops, upload = (100 * table["tier_mix"][f"{kind}_ratio_vs_fedavg"] for kind in ("flops", "upload"))
        print(f"{method:<17}{cells}  {flops:>11.2f}  {upload:>12.2f}")


if __name__ == "__main__":
    main()
