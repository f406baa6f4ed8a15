"""``fedbt prepare-corpus``, ``fedbt tokenize``, ``fedbt estimate`` and ``fedbt objectives``: the data and cost
commands. Heavy imports happen inside the handlers, so that ``fedbt --help`` stays fast."""

from __future__ import annotations

import argparse
import json

from fedbt.errors import FedBTError

EXIT_ERROR = 2


def add_parsers(subparsers) -> None:
    """Register the commands on an argparse ``subparsers`` object."""
    prepare = subparsers.add_parser(
        "prepare-corpus",
        help="build a domain corpus from user-supplied data (S2ORC shards), one sentence per line",
        description="Build the paper's pre-training corpus of one field from S2ORC shards you downloaded (S2ORC "
        "needs an API key): papers whose mag_field_of_study lists the field, abstract + body paragraphs split into "
        "sentences (segtok), written to OUT/sentences.jsonl with papers.tsv and manifest.json.",
    )
    prepare.add_argument("source", choices=["s2orc"], help="the corpus family")
    prepare.add_argument("--field", required=True, help='mag_field_of_study to keep, e.g. "Computer Science"')
    prepare.add_argument("--metadata", nargs="+", required=True, help="metadata_*.jsonl[.gz] shards or folders")
    prepare.add_argument("--pdf-parses", nargs="*", default=[], help="pdf_parses_*.jsonl[.gz] shards or folders")
    prepare.add_argument("--out", required=True, help="output folder")
    prepare.add_argument("--max-papers", type=int, help="keep at most this many papers (the paper: 6 x 12,000)")
    prepare.add_argument("--full-text-only", action="store_true", help="skip papers without a pdf parse")
    prepare.add_argument("--min-words", type=int, default=5, help="drop shorter sentences")
    prepare.set_defaults(handler=_prepare)

    tokenize = subparsers.add_parser(
        "tokenize", help="build the token caches a run config needs (the pipeline runs this once per data set)"
    )
    tokenize.add_argument("config", nargs="?", help="YAML run config (default: the defaults)")
    tokenize.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    tokenize.add_argument("--stamp", help="write the caches' folders to this JSON file (the pipeline's output)")
    tokenize.set_defaults(handler=_tokenize)

    estimate = subparsers.add_parser(
        "estimate", help="analytic FLOPs and device-hours of every job of a study, before running it (no weights)"
    )
    estimate.add_argument("--configfile", required=True, help="study config, e.g. config/paper.yaml")
    estimate.add_argument(
        "--tflops",
        type=float,
        help="sustained TFLOP/s per device (default: the throughput benchmarks/throughput.py measured on this device)",
    )
    estimate.add_argument("--json", action="store_true", help="print the estimate as JSON")
    estimate.add_argument("--jobs", action="store_true", help="list every job, not only the studies")
    estimate.set_defaults(handler=_estimate)

    objectives = subparsers.add_parser("objectives", help="list the registered training objectives")
    objectives.set_defaults(handler=_objectives)


def _prepare(args: argparse.Namespace) -> int:
    from fedbt.data.s2orc import PrepareSettings, prepare_s2orc

    settings = PrepareSettings(
        args.field, args.metadata, args.pdf_parses, args.out, args.max_papers, args.full_text_only, args.min_words
    )
    manifest = prepare_s2orc(settings)
    print(json.dumps({k: v for k, v in manifest.items() if k not in ("metadata", "pdf_parses")}, indent=1))
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedbt.config import load_config
    from fedbt.run import prepare, tokenize

    folders = tokenize(prepare(load_config(args.config, args.set or [])))
    if args.stamp:
        Path(args.stamp).parent.mkdir(parents=True, exist_ok=True)
        Path(args.stamp).write_text(json.dumps(folders, indent=1) + "\n")
    print(json.dumps(folders, indent=1))
    return 0


def _estimate(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from fedbt.estimate import THROUGHPUT_FILE, estimate, measured_tflops

    tflops, basis = args.tflops, "--tflops"
    if tflops is None:
        measured = measured_tflops()
        if measured is None:
            raise FedBTError(
                f"no throughput measured on this device ({THROUGHPUT_FILE} is missing or from another device): run "
                "`python benchmarks/throughput.py` here, or pass --tflops N (sustained TFLOP/s per device)"
            )
        tflops, basis = measured[0], f"measured by benchmarks/throughput.py on {measured[1]}"
    study = yaml.safe_load(Path(args.configfile).read_text())
    result = estimate(study, tflops)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(
        f"{args.configfile}: analytic training FLOPs (no weights loaded); device-hours at {tflops:g} sustained "
        f"TFLOP/s ({basis})"
    )
    simulated = "sim_deployment_hours" in result["total"]
    sim_head = f" {'sim deploy h':>13}" if simulated else ""
    head = f"{'study':<18} {'jobs':>5} {'client TFLOPs':>16} {'eval TFLOPs':>14} {'client h':>10} {'all h':>10}"
    print(head + sim_head)
    rows = [*result["studies"].items(), ("total", result["total"])]
    for name, row in rows:
        sim = row.get("sim_deployment_hours")
        sim_cell = (f" {sim:>13,.2f}" if sim is not None else f" {'–':>13}") if simulated else ""
        print(
            f"{name:<18} {row['jobs']:>5} {row['client_flops'] / 1e12:>16,.1f} {row['evaluation_flops'] / 1e12:>14,.1f}"
            f" {row['client_device_hours']:>10,.2f} {row['device_hours']:>10,.2f}{sim_cell}"
        )
    if simulated:
        print(
            "sim deploy h: simulated hours of the studies' rounds on their tiers' devices (federation.tiers[].device; "
            "slowest available client or deadline per round, jobs one after another, server aggregation left out)"
        )
    total = result["total"]
    print(
        f"disk: {total['disk_bytes'] / 1e9:,.2f} GB of models ({total['kept_inputs_bytes'] / 1e9:,.2f} GB starting "
        f"models and students, {(total['disk_bytes'] - total['kept_inputs_bytes']) / 1e9:,.2f} GB kept by jobs: "
        "keep_models / keep_model, tracking.log_model); ledgers, metrics and logs add KB per job"
    )
    bases = sorted({job["lengths"] for job in result["jobs"]})
    print(f"sequence lengths: {', '.join(bases)} (max_length = upper bound: no token cache built here yet)")
    if args.jobs:
        for job in result["jobs"]:
            print(
                f"  {job['study']}/{job['data']}/{job['variant']}/seed{job['seed']}: client "
                f"{job['client_flops'] / 1e12:,.1f} TFLOPs, evaluation {job['evaluation_flops'] / 1e12:,.1f} TFLOPs"
                + (f", {job['sim_seconds'] / 3600:,.2f} simulated h" if job["sim_seconds"] is not None else "")
                + (f" ({'; '.join(job['notes'])})" if job["notes"] else "")
            )
    return 0


def _objectives(args: argparse.Namespace) -> int:
    from fedbt.training.objectives import available_objectives

    for name, objective in available_objectives().items():
        print(f"{name:<22} [{objective.scenario}, {objective.modality}]  {objective.auto_class}")
    return 0
