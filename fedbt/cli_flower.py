"""``fedbt flower``: one fedbt run over Flower on this machine, from start to clean stop.

Starts a SuperLink (with Flower's simulation engine, or with one SuperNode per client for a deployment) on
127.0.0.1, submits the fedbt App with ``flwr run``, waits for the run, and stops every process it started.
The run directory, ledger and MLflow run are those of ``fedbt run`` (tagged with the runtime). Needs the
optional extra ``pip install -e '.[flower]'``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def add_parser(subparsers) -> None:
    """Register ``flower`` and its flags on an argparse ``subparsers`` object."""
    parser = subparsers.add_parser(
        "flower",
        help="run a config over Flower on this machine (simulation engine or local SuperNodes)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("config", help="YAML run config, e.g. config/runs/smoke.yaml")
    parser.add_argument(
        "--mode",
        choices=("simulation", "deployment"),
        default="simulation",
        help="simulation: Flower's simulation engine (Ray); deployment: a SuperLink and one SuperNode per client",
    )
    parser.add_argument("--out", help="run directory (default results/runs/<study>/<name>)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    parser.add_argument("--fresh", action="store_true", help="discard an earlier checkpoint in the run directory")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    parser.add_argument("--no-wire", action="store_true", help="do not measure the bytes of every message")
    parser.add_argument(
        "--round-deadline",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="drop a client that has not replied within SECONDS of its round's start (default 0: the config's "
        "federation.deadline_s; none when unset)",
    )
    parser.add_argument("--workdir", help="keep the SuperLink/SuperNode homes and logs here (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the run (default 3600)")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from fedbt.flower import require_flwr

    require_flwr()
    from fedbt.flower.local import LocalFederation
    from fedbt.flower.runconfig import RunSettings
    from fedbt.run import prepare

    overrides = list(args.set or []) + (["tracking.enabled=false"] if args.no_track else [])
    settings = RunSettings(
        config=str(Path(args.config).resolve()),
        overrides=tuple(overrides),
        out=str(Path(args.out).resolve()) if args.out else "",
        fresh=args.fresh,
        wire=not args.no_wire,
        wait_nodes=120.0,
        round_deadline=args.round_deadline,
    )
    RunSettings.from_run_config(settings.as_run_config())  # a negative deadline fails here
    prepared = prepare(settings.load())  # a bad config fails here, before any process starts
    clients = prepared.config.federation.clients
    with tempfile.TemporaryDirectory(prefix="fedbt-flower-") as tmp:
        workdir = Path(args.workdir or tmp)
        with LocalFederation(args.mode, clients, workdir) as federation:
            run = federation.run_or_raise(settings, timeout=args.timeout)
    metrics = json.loads((prepared.out_dir / "metrics.json").read_text())
    summary = {"run_dir": str(prepared.out_dir), "flower_run_id": run.run_id, "runtime": metrics["runtime"]["name"]}
    print(json.dumps({**summary, **metrics["final"]}, indent=1))
    return 0
