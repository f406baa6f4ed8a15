"""The ``fedbt`` command line: ``run``, ``flower``, ``costs``, ``methods``, ``distill``, ``report``, ``track-init``,
``prepare-corpus``, ``tokenize``, ``estimate``, ``objectives``.

Heavy imports (torch, transformers, mlflow) happen inside the subcommands so that ``--help`` is fast.
Offline by default: the hub and datasets are set offline unless the environment says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from fedbt.errors import FedBTError

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
}


def _run(args: argparse.Namespace) -> int:
    from fedbt.config import load_config
    from fedbt.run import execute, prepare

    overrides, choice = list(args.set or []), None
    if args.choose_from:  # a study with lr_from: the grid point another study's runs chose on dev
        from fedbt.report.selection import choose_from

        chosen_sets, choice = choose_from(args.choose_from)
        overrides += chosen_sets
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if args.no_track:
        overrides.append("tracking.enabled=false")
    config = load_config(args.config, overrides)
    if choice is not None:  # MLflow shows where the run's grid point was chosen, and which
        config.tracking.tags |= {"tuned_in": choice.study, "tuned_point": choice.chosen}
    prepared = prepare(config)
    metrics = execute(prepared, fresh=args.fresh)
    if choice is not None:  # beside metrics.json, so that the report can check it against the study's choice
        from fedbt.report.selection import CHOICE_FILE

        (prepared.out_dir / CHOICE_FILE).write_text(json.dumps(dataclasses.asdict(choice), indent=1) + "\n")
    summary = {"run_dir": str(prepared.out_dir), **metrics["final"]}
    print(json.dumps(summary, indent=1))
    return 0


def _methods(args: argparse.Namespace) -> int:
    from fedbt.federated.method import available_methods, load_plugins

    load_plugins(args.plugin or [])
    methods = available_methods()
    if args.json:
        rows = [{"name": n, "description": m.description, "scenarios": list(m.scenarios)} for n, m in methods.items()]
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(n) for n in methods)
    for name, method in methods.items():
        print(f"{name:<{width}}  [{', '.join(method.scenarios)}]  {method.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fedbt`` command."""
    from fedbt import cli_costs, cli_data, cli_distill, cli_flower, cli_report

    parser = argparse.ArgumentParser(prog="fedbt", description="FedBT benchmark suite: federated runs and cost tables.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one federated training config (resumes a killed run)")
    run.add_argument("config", nargs="?", help="YAML run config, e.g. config/runs/smoke.yaml (default: the defaults)")
    run.add_argument("--out", help="run directory (default results/runs/<study>/<name>)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    run.add_argument("--fresh", action="store_true", help="discard an earlier checkpoint in the run directory")
    run.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    run.add_argument(
        "--choose-from",
        metavar="JSON",
        help="run at the grid point with the best mean dev score among finished runs: "
        '{"study": S, "points": {LABEL: {"sets": [KEY=VALUE, ...], "runs": [metrics.json, ...]}}} (lr_from studies)',
    )
    run.set_defaults(handler=_run)

    methods = sub.add_parser("methods", help="list the registered federated methods")
    methods.add_argument("--plugin", action="append", help="also import this module or .py file")
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    methods.set_defaults(handler=_methods)

    cli_flower.add_parser(sub)
    cli_costs.add_parser(sub)
    cli_data.add_parsers(sub)
    cli_distill.add_parser(sub)
    cli_report.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedbt`` command."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from fedbt.gpu import claim_from_env

    claim_from_env()  # before torch starts: take a free GPU slot when FEDBT_GPUS is set (Snakemake jobs)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.handler(args)
    except FedBTError as error:
        print(f"fedbt: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
