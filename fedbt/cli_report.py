"""``fedbt report`` (tables and figures from finished runs) and ``fedbt track-init`` (create the MLflow store
and experiments once, before parallel jobs start). Heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    """Register ``report`` and ``track-init`` on an argparse ``subparsers`` object."""
    report = subparsers.add_parser("report", help="paper-style tables (Markdown, LaTeX) and figures from run dirs")
    report.add_argument("--spec", required=True, help="report specification: JSON text or a JSON file")
    report.add_argument("--out", default="results", help="output folder (tables/ and figures/ go here)")
    report.set_defaults(handler=main)

    track = subparsers.add_parser("track-init", help="create the MLflow store and experiments (before fan-out)")
    track.add_argument("--uri", default="sqlite:///results/mlflow.db", help="MLflow tracking URI")
    track.add_argument("--experiment", action="append", default=[], help="experiment name (repeatable)")
    track.set_defaults(handler=track_init)


def main(args: argparse.Namespace) -> int:
    """Build the report of ``--spec`` into ``--out`` and list the written files."""
    from fedbt.report.build import build_report
    from fedbt.report.spec import load_spec

    for path in build_report(load_spec(args.spec), args.out):
        print(path)
    return 0


def track_init(args: argparse.Namespace) -> int:
    """Create the store (with MLflow's ``Default`` experiment) and each experiment if missing; print their ids."""
    from fedbt.tracking import ensure_experiment

    ids = {name: ensure_experiment(args.uri, name) for name in args.experiment or ["Default"]}
    print(json.dumps({"uri": args.uri, "experiments": ids}, indent=1))
    return 0
