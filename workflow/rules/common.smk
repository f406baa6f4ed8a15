# Planning: fedbt.pipeline (a tested module) expands the study config into jobs, their `fedbt run` overrides,
# the studies that read each job and the report specification; the rules below only look things up in PLAN.

import json
import os
import sys
from pathlib import Path

from fedbt.errors import FedBTError
from fedbt.pipeline import Plan, job_environment, set_flags, track_init_args

try:
    PLAN = Plan(config)
except FedBTError as error:
    raise WorkflowError(str(error)) from None

LAYOUT = PLAN.layout
RESOURCES = PLAN.resources()  # per training job: gpu (0 on CPU clusters), mem_mb, runtime
REPORT_OUTPUTS = PLAN.report_outputs()
TRACK_INIT = track_init_args(PLAN)  # `fedbt track-init` arguments: the store, experiments and study filters


def gpu_limit() -> int:
    """The `--resources gpu=N` limit of this invocation (0 when not given)."""
    resources = workflow.global_resources
    value = getattr(resources["gpu"], "value", resources["gpu"]) if "gpu" in resources else 0
    return int(value) if isinstance(value, int) else 0


# Jobs run the `fedbt` of this environment and, with --resources gpu=N, claim one of N GPU slots (fedbt/gpu.py).
os.environ.update(job_environment(Path(sys.executable).parent, gpu_limit(), os.environ.get("PATH", "")))


def captioned(paths: list[str], category: str) -> list:
    """Mark outputs for `snakemake --report`, each with the caption of its kind (workflow/report/*.rst)."""
    captions = f"{workflow.basedir}/workflow/report"
    marked = []
    for path, caption, sub in PLAN.report_captions(paths):
        marked.append(report(path, caption=f"{captions}/{caption}", category=category, subcategory=sub))
    return marked
