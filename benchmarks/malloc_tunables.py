"""Benchmark (h): glibc's malloc on transparent huge pages for a training process.

The pipeline starts every job with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (``fedbt.pipeline.job_environment``).
This runs the same short ``fedbt run`` (MiniLM FedAvg on the CS corpus, 6 clients, 8 local steps of 4 sentences,
2 rounds, one thread) with and without it, alternating, and prints per setting the median wall seconds, user and
kernel CPU seconds and minor page faults of the child process, the ratios, and whether the held-out losses are
identical (they must be: the allocator changes where tensors live, not what is computed).

    .venv/bin/python benchmarks/malloc_tunables.py [--repeats 2 --rounds 2 --steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedbt.pipeline import MALLOC_TUNABLES as TUNABLES


def run_once(out: Path, work: Path, args: argparse.Namespace, tunables: str | None) -> dict[str, float | list]:
    """One ``fedbt run`` in a child process; its wall seconds, CPU seconds, page faults and held-out losses."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("GLIBC_TUNABLES", None)
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    sets = {
        "model.source": "minilm",
        "model.max_length": 32,
        "data.corpus": "cs",
        "data.max_examples": 1536,
        "data.partition_dir": work / "partitions",
        "data.cache_dir": work / "cache",
        "federation.clients": 6,
        "federation.rounds": args.rounds,
        "federation.partition.scheme": "skewed",
        "local.steps": args.steps,
        "local.batch_size": 4,
        "local.lr": 3e-4,
        "scenario": "pretrain",
        "method.name": "fedavg",
        "evaluation.task": "null",
        "tracking.enabled": "false",
        "keep_model": "false",
    }
    flags = [part for key, value in sets.items() for part in ("--set", f"{key}={value}")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).with_name("fedbt")), "run", "--out", str(out), *flags],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"fedbt run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    return {
        "wall": wall,
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
        "faults": after.ru_minflt - before.ru_minflt,
        "losses": [record["heldout_mlm_loss"] for record in rounds],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    settings = {"default malloc": None, f"GLIBC_TUNABLES={TUNABLES}": TUNABLES}
    samples: dict[str, list[dict]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for repeat in range(args.repeats):
            for name, tunables in settings.items():  # alternate, so machine noise hits both
                out = work / f"run-{repeat}-{tunables is not None}"
                samples[name].append(run_once(out, work, args, tunables))
    medians = {
        name: {key: statistics.median(s[key] for s in runs) for key in ("wall", "user", "sys", "faults")}
        for name, runs in samples.items()
    }
    for name, m in medians.items():
        print(
            f"{name:42s} wall {m['wall']:7.1f} s  user {m['user']:7.1f} s  sys {m['sys']:6.1f} s"
            f"  minor faults {m['faults'] / 1e6:6.2f} M"
        )
    base, tuned = medians.values()
    print(
        f"ratio tuned / default: wall {tuned['wall'] / base['wall']:.2f}, "
        f"CPU {(tuned['user'] + tuned['sys']) / (base['user'] + base['sys']):.2f}, "
        f"kernel {tuned['sys'] / base['sys']:.2f}, page faults {tuned['faults'] / base['faults']:.3f}"
    )
    losses = {json.dumps(s["losses"]) for runs in samples.values() for s in runs}
    print(f"held-out losses identical across settings and repeats: {len(losses) == 1}")


if __name__ == "__main__":
    main()
