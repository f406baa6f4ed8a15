"""Regenerate the report's golden inputs and outputs from real runs: ``.venv/bin/python tests/golden/regenerate.py``.

Runs the tiny test study (``config/test.yaml``, two federation seeds, two evaluation seeds) through the pipeline
in a temporary directory, copies each run's ``metrics.json`` to ``tests/golden/runs/<scenario>/<data>/<variant>/
seed<N>/`` and rebuilds ``tests/golden/<table>.md`` from them with the spec of ``tests/test_report.py``. Rerun it
when the run or report format changes, and review the diff of the golden tables.
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


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from fedbt.pipeline import Plan
    from fedbt.report.build import build_report
    from fedbt.report.spec import from_dict
    from tests.test_report import spec_dict

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
            for variant, cells in plan.study_runs(name).items():
                for data, paths in cells.items():
                    for seed, source in zip(SEEDS, paths, strict=True):
                        target = HERE / "runs" / spec["scenario"] / data / variant / f"seed{seed}" / "metrics.json"
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(Path(tmp) / source, target)
        out = Path(tmp) / "report"
        build_report(from_dict(spec_dict()), out)
        for table in ("pretrain", "finetune"):
            shutil.copy(out / "tables" / f"{table}.md", HERE / f"{table}.md")


if __name__ == "__main__":
    main()
