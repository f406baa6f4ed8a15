"""``fedbt costs``: weight-free communication and FLOPs table of a method on an architecture.

Heavy imports (torch, transformers) happen inside :func:`main`, so that ``fedbt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fedbt.errors import ConfigError, FedBTError

EXIT_ERROR = 2


def add_parser(subparsers) -> None:
    """Register ``costs`` and its flags on an argparse ``subparsers`` object."""
    parser = subparsers.add_parser(
        "costs",
        help="per-round upload/download and analytic FLOPs of a method, without weights",
        description=(
            "Communication (parameters, bytes, MiB) and analytic training FLOPs per round of a federated "
            "method on an architecture, computed on the meta device without any weights. Client 0 is "
            "representative; ratios compare with full-model FedAvg on the same architecture."
        ),
    )
    parser.add_argument(
        "--arch",
        required=True,
        help="shipped shape (bert-base-uncased, vit-base, ...), minilm, a local checkpoint directory, or an inline "
        "shape bert:layers=8,hidden=512,heads=8,ffn=2048,vocab=30522 or "
        "vit:layers=12,hidden=768,heads=12,ffn=3072,image=224,patch=16",
    )
    parser.add_argument("--method", required=True, help="registered method name (see `fedbt methods`)")
    parser.add_argument(
        "--rounds", type=int, help="number of federated rounds I (default: the paper's, 5 pre-training, 10 fine-tuning)"
    )
    parser.add_argument("--json", action="store_true", help="print the cost table as JSON only")
    parser.add_argument(
        "--head",
        "--task-head",
        dest="head",
        help="output head (an objective, see `fedbt objectives`): mlm (pre-training), classification or "
        "token_classification (fine-tuning); default: "
        "mlm, or the paper's fine-tuning head (token_classification) for a method that only fine-tunes. On an "
        "image architecture mlm means mim (masked image modelling) and classification image_classification",
    )
    parser.add_argument("--num-labels", type=int, default=2, help="classes of the classification head")
    parser.add_argument("--clients", type=int, default=1, help="also report the union of trained layers")
    parser.add_argument("--sequences", type=int, default=256, help="sequences per client per round")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--mlm-probability", type=float, default=0.15, help="masked fraction (mlm head)")
    parser.add_argument(
        "--full-logits", action="store_true", help="MLM decoder at every token instead of masked ones only"
    )
    parser.add_argument("--seed", type=int, default=0, help="run seed (methods sample layers from it)")
    parser.add_argument("--dtype-bytes", type=int, default=4, help="bytes per transmitted value (4: fp32)")
    parser.add_argument("--local-layers", type=int, help="local depth L_k (sets the option local_layers)")
    parser.add_argument(
        "--student",
        metavar="ARCH",
        help="the student's shape for distill (sets the option student; same forms as --arch)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option, value parsed as YAML (repeatable)",
    )
    parser.add_argument(
        "--tiers",
        metavar="YAML",
        help="client resource tiers, as federation.tiers in a run config, e.g. "
        "'[{share: 0.5, local_layers: 4}, {share: 0.3, local_layers: 8}, {share: 0.2, local_layers: 12}]' "
        "(keys share, local_layers, width, memory_mb, name): adds one row per tier (client 0 as a client of "
        "that tier) and the mix of the tiers at their shares",
    )
    parser.add_argument("--plugin", action="append", default=[], help="module or .py file registering methods")
    parser.add_argument("--compare-paper", action="store_true", help="add the paper's upload percentages next to ours")
    parser.set_defaults(handler=main)


def parse_options(items: list[str], local_layers: int | None = None, student: str | None = None) -> dict[str, Any]:
    """``["k=v", ...]`` to a mapping with YAML-parsed values; ``local_layers`` and ``student`` override their
    options."""
    import yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--option", f"'{item}' must look like key=value (e.g. local_layers=6)")
        options[key.strip()] = yaml.safe_load(value)
    if local_layers is not None:
        options["local_layers"] = local_layers
    if student is not None:
        options["student"] = student
    return options


def parse_tiers(text: str | None) -> tuple:
    """The ``--tiers`` YAML list as :class:`~fedbt.federated.tiers.Tier` s (empty when not given), checked as
    ``federation.tiers`` is."""
    import yaml

    from fedbt.config import TierConfig, check_tiers, from_dict
    from fedbt.federated.tiers import tiers_from_config

    if text is None:
        return ()
    items = yaml.safe_load(text)
    if not isinstance(items, list) or not items:
        raise ConfigError("--tiers", f"expected a non-empty YAML list of tiers, got {text!r}")
    configs = [from_dict(TierConfig, item, f"--tiers[{i}]") for i, item in enumerate(items)]
    check_tiers(configs, None, "--tiers")
    return tiers_from_config(configs, key="--tiers")


def format_tiers(table: dict[str, Any]) -> list[str]:
    """One line per resource tier: its totals over the rounds, per client, and the ratios to full-model FedAvg."""
    rounds = len(table["rounds"])
    lines = [
        "",
        f"per tier (client 0 as a client of the tier; per client, means over the {rounds} rounds):",
        f"{'tier':<10}  {'share':>5}  {'L_k':>4}  {'width':>5}  {'upload MiB/round':>16}  {'download MiB/round':>18}  "
        f"{'GFLOPs/round':>12}  {'upload %':>8}  {'FLOPs %':>8}",
    ]
    for tier in table["tiers"]:
        total = tier["total"]
        depth = "-" if tier["local_layers"] is None else str(tier["local_layers"])
        width = "-" if tier["width"] is None else f"{tier['width']:.3g}"
        lines.append(
            f"{tier['name']:<10}  {tier['share']:>5.2f}  {depth:>4}  {width:>5}  "
            f"{total['upload_mib'] / rounds:>16.2f}  {total['download_mib'] / rounds:>18.2f}  "
            f"{total['analytic_flops'] / rounds / 1e9:>12,.1f}  {tier['upload_ratio_vs_fedavg']:>8.2%}  "
            f"{tier['flops_ratio_vs_fedavg']:>8.2%}"
        )
    mix = table["tier_mix"]
    lines.append(
        f"{'mix':<10}  {1.0:>5.2f}  {'':>4}  {'':>5}  {'':>16}  {'':>18}  {'':>12}  "
        f"{mix['upload_ratio_vs_fedavg']:>8.2%}  {mix['flops_ratio_vs_fedavg']:>8.2%}"
    )
    return lines


def format_table(table: dict[str, Any]) -> str:
    """A readable aligned text version of a :func:`fedbt.costs.cost_table` result."""
    from fedbt.ledger import format_layers

    arch = table["arch"]
    inputs = f"image {arch['image']}, patch {arch['patch']}" if "image" in arch else f"vocab {arch['vocab']}"
    lines = [
        f"{table['method']} on {arch['name']} ({table['head']} head): {arch['layers']} layers, hidden "
        f"{arch['hidden']}, {arch['heads']} heads, ffn {arch['ffn']}, {inputs}, {arch['params']:,} parameters",
        f"options: {json.dumps(table['options'])}",
        "",
        f"{'round':>5}  {'trained layers':<14}  {'local layers':<14}  {'upload params':>14}  "
        f"{'upload MiB':>10}  {'download MiB':>12}  {'GFLOPs':>12}",
    ]
    for row in [*table["rounds"], {"round": "total", **table["total"]}]:
        trained = format_layers(row.get("trained_layers", []))
        local = row.get("local_layers", [])
        # sampled maps may repeat a layer: show those in full
        local = format_layers(local) if len(set(local)) == len(local) else ",".join(map(str, local))
        union = f"  all clients: {format_layers(row['trained_layers_union'])}" if "trained_layers_union" in row else ""
        lines.append(
            f"{row['round']:>5}  {trained:<14}  {local:<14}  {row['upload_params']:>14,}  "
            f"{row['upload_mib']:>10.2f}  {row['download_mib']:>12.2f}  "
            f"{row['analytic_flops'] / 1e9:>12,.1f}{union}"
        )
    reference = f" of {table['fedavg_reference_arch']}" if "fedavg_reference_arch" in table else ""
    lines += [
        "",
        f"vs fedavg{reference}: upload {table['upload_ratio_vs_fedavg']:.2%}, download "
        f"{table['download_ratio_vs_fedavg']:.2%}, FLOPs {table['flops_ratio_vs_fedavg']:.2%}",
    ]
    if "tiers" in table:
        lines += format_tiers(table)
    if "paper" in table:
        lines += ["", f"{'paper row':<12}  {'method':<16}  {'paper %':>8}  {'ours %':>8}"]
        for row in table["paper"]:
            percents = f"{row['paper_percent']:>8.2f}  {row['ours_percent']:>8.2f}"
            lines.append(f"{row['label']:<12}  {row['method']:<16}  {percents}")
    return "\n".join(lines)


def implied_head(method: str) -> str:
    """The head of ``method``'s only scenario (the paper's head for it), or ``mlm`` when it has both."""
    from fedbt import paper
    from fedbt.federated.method import get_method

    scenarios = get_method(method).scenarios
    return paper.HEAD[scenarios[0]] if len(scenarios) == 1 else paper.HEAD["pretrain"]


def main(args: argparse.Namespace) -> int:
    """Print the cost table (text, or JSON with ``--json``); errors go to stderr with exit status 2."""
    from fedbt import paper
    from fedbt.costs import compare_paper, cost_table, scenario_of
    from fedbt.federated.method import load_plugins

    try:
        load_plugins(args.plugin)
        head = args.head or implied_head(args.method)
        common = {
            "num_labels": args.num_labels,
            "sequences": args.sequences,
            "seq_len": args.seq_len,
            "mlm_probability": args.mlm_probability,
            "masked_only": not args.full_logits,
            "seed": args.seed,
            "dtype_bytes": args.dtype_bytes,
        }
        table = cost_table(
            args.arch,
            args.method,
            paper.ROUNDS[scenario_of(head)] if args.rounds is None else args.rounds,
            parse_options(args.option, args.local_layers, args.student),
            head=head,
            clients=args.clients,
            tiers=parse_tiers(args.tiers),
            **common,
        )
        if args.compare_paper:
            table["paper"] = compare_paper(scenario_of(head), **common)
    except FedBTError as error:
        print(f"fedbt costs: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(table, indent=2) if args.json else format_table(table))
    return 0
