"""``fedbt report`` (tables and figures from finished runs) and ``fedbt track-init`` (create the MLflow store,
experiments and study filters once, before parallel jobs start). Heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    """Register ``report`` and ``track-init`` on an argparse ``subparsers`` object."""
    report = subparsers.add_parser("report", help="paper-style tables (Markdown, LaTeX) and figures from run dirs")
    report.add_argument("--spec", required=True, help="report specification: JSON text or a JSON file")
    report.add_argument("--out", default="results", help="output folder (tables/ and figures/ go here)")
    report.set_defaults(handler=main)

    track = subparsers.add_parser(
        "track-init", help="create the MLflow store, experiments and study filters (before jobs fan out)"
    )
    track.add_argument("--uri", default="sqlite:///results/mlflow.db", help="MLflow tracking URI")
    track.add_argument(
        "--studies",
        default="{}",
        help='JSON: experiment -> its studies, [{"name", "title", "data", "variants", "seeds"}, ...]',
    )
    track.set_defaults(handler=track_init)


def main(args: argparse.Namespace) -> int:
    """Build the report of ``--spec`` into ``--out`` and list the written files."""
    from fedbt.report.build import build_report
    from fedbt.report.spec import load_spec

    for path in build_report(load_spec(args.spec), args.out):
        print(path)
    return 0


def track_init(args: argparse.Namespace) -> int:
    """Create the store, each experiment and its studies' filters (re-tagging runs already there); print where
    each study's runs are in the MLflow UI."""
    from fedbt.tracking import StudyScope, runs_view, sync_studies

    views = {}
    for experiment, scopes in json.loads(args.studies).items():
        studies = [StudyScope.from_dict(scope) for scope in scopes]
        experiment_id = sync_studies(args.uri, experiment, studies)
        views[experiment] = runs_view(experiment_id)
        views.update({f"{experiment} / {s.name}": runs_view(experiment_id, s.name) for s in studies})
    print(f"MLflow: mlflow ui --backend-store-uri {args.uri}")
    for name, url in views.items():
        print(f"  {name}: {url}")
    return 0
