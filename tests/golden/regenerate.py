"""Regenerate the report's golden inputs and outputs from real runs: ``.venv/bin/python tests/golden/regenerate.py``.

Runs the tiny test study (``config/test.yaml``, two federation seeds, two evaluation seeds) through the pipeline
in a temporary directory, copies each run's ``metrics.json`` to ``tests/golden/runs/<scenario>/<data>/<variant>/
seed<N>/`` and rebuilds ``tests/golden/<table>.md`` from them with the spec of ``tests/test_report.py``. Rerun it
when the run or report format changes, and review the diff of the golden tables. ``--tables-only`` rebuilds the
golden tables from the stored runs without rerunning them (when only the report changed).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SEEDS = [0, 1]


def tables() -> None:
    """Rebuild ``tests/golden/<table>.md`` from the runs under ``tests/golden/runs``."""
    from fedbt.report.build import build_report
    from fedbt.report.spec import from_dict
    from tests.test_report import spec_dict

    with tempfile.TemporaryDirectory() as tmp:
        build_report(from_dict(spec_dict()), tmp)
        for table in ("pretrain", "finetune"):
            shutil.copy(Path(tmp) / "tables" / f"{table}.md", HERE / f"{table}.md")


def main() -> None:
    sys.path.insert(0, str(ROOT))
    if "--tables-only" in sys.argv[1:]:
        tables()
        return
    from fedbt.pipeline import Plan

    study = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    study["scenarios"]["pretrain"]["evaluation.seeds"] = SEEDS
    study["tracking"] = {"enabled": False}
    study["defaults"]["local.flop_count_steps"] = 1
    for spec in study["studies"].values():
        spec["seeds"] = SEEDS
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "golden.yaml"
        config.write_text(yaml.safe_dump(study))
        snakemake = Path(sys.executable).parent / "snakemake"
        command = [
            str(snakemake),
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            tmp,
            "--configfile",
            str(config),
            "--cores",
            "2",
        ]
        subprocess.run([*command, "--config", f"data_dir={ROOT / 'data'}"], check=True)
        shutil.rmtree(HERE / "runs", ignore_errors=True)
        plan = Plan(study)
        for name, spec in study["studies"].items():
            for variant in spec["variants"]:
                for data, paths in plan.cell_runs(name, variant).items():
                    for seed, source in zip(SEEDS, paths, strict=True):
                        target = HERE / "runs" / spec["scenario"] / data / variant / f"seed{seed}" / "metrics.json"
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(Path(tmp) / source, target)
    tables()


if __name__ == "__main__":
    main()
