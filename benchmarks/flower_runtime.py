"""Benchmark: the same FedAvg run in-process (``fedbt run``), in Flower's simulation engine and as a local Flower
deployment (a SuperLink and one SuperNode per client on 127.0.0.1), side by side in one invocation.

Work: MiniLM (``model.source: minilm``), masked LM on the shipped CS corpus, 6 clients, a few rounds of a few
local steps (small enough for a few minutes on 2 cores). Every runtime runs in its own processes, started by
this script: ``fedbt run`` as a subprocess, the Flower runtimes through :class:`fedbt.flower.local.LocalFederation`.

Reported per runtime: the wall seconds of each round as the run measures them (``round_seconds`` in
``metrics.json``: server-side, from the first client's task to the evaluated global model), the wall seconds
from launch to finished run (start-up included), the CPU seconds of the whole process tree (less sensitive to
other load on the machine than wall seconds), and the peak memory of the whole process tree, sampled every
``--sample`` seconds three ways: the summed proportional set size (PSS: a page shared by k processes counts 1/k
in each, so shared libraries and copy-on-write pages count once; the memory the runtime really takes), the
summed resident set size (RSS: shared pages count in every process, an upper bound) and the largest single
process's RSS (for a deployment: the heaviest node or server process, what one device must hold). The train
losses of the runtimes are printed to show that they ran the same computation (equal up to float reassociation:
thread counts differ). Wire-byte measurement is off (it hashes every message, which Flower's simulation engine
itself does not do).

    .venv/bin/python benchmarks/flower_runtime.py [--clients 6 --rounds 2 --steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from fedbt.flower.local import FLOWER_ENV, LocalFederation
from fedbt.flower.runconfig import RunSettings

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config/runs/fedavg-minilm.yaml"


def overrides(args: argparse.Namespace, tmp: Path) -> list[str]:
    return [
        "model.source=minilm",
        f"model.max_length={args.max_length}",
        f"data.max_examples={args.examples_per_client * args.clients}",
        "data.heldout_examples=32",
        f"data.data_dir={REPO / 'data'}",
        f"data.partition_dir={tmp / 'partitions'}",
        f"federation.clients={args.clients}",
        f"federation.rounds={args.rounds}",
        "federation.partition.scheme=iid",
        f"local.steps={args.steps}",
        f"local.batch_size={args.batch_size}",
        "evaluation.task=null",
        "tracking.enabled=false",
        f"out_dir={tmp / 'run'}",
    ]


class TreeSampler:
    """Samples a changing set of processes in a background thread: the peaks of their summed PSS, of their summed
    RSS and of the largest process's RSS, and the CPU seconds of every process seen (its last sample; a process
    that exits between samples loses at most one interval)."""

    def __init__(self, processes: Callable[[], list[psutil.Process]], interval: float):
        self.processes, self.interval = processes, interval
        self.peak_pss = self.peak_rss = self.peak_process_rss = 0
        self._cpu: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    def _sample(self) -> None:
        while not self._stop.is_set():
            pss = rss = largest = 0
            for proc in self.processes():
                try:
                    with proc.oneshot():
                        memory = proc.memory_full_info()
                        times = proc.cpu_times()
                except psutil.Error:
                    continue
                pss, rss, largest = pss + memory.pss, rss + memory.rss, max(largest, memory.rss)
                self._cpu[proc.pid, proc.create_time()] = times.user + times.system
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.peak_process_rss = max(self.peak_process_rss, largest)
            self._stop.wait(self.interval)


def tree_of(pid: int) -> Callable[[], list[psutil.Process]]:
    def processes() -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    return processes


def in_process(args: argparse.Namespace, tmp: Path) -> tuple[Path, float, TreeSampler]:
    """``fedbt run`` in a subprocess: (run directory, wall seconds, process-tree samples)."""
    command = [str(Path(sys.executable).parent / "fedbt"), "run", str(CONFIG), "--no-track"]
    for override in overrides(args, tmp):
        command += ["--set", override]
    started = time.perf_counter()
    env = {**os.environ, **FLOWER_ENV}
    popen = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with popen, TreeSampler(tree_of(popen.pid), args.sample) as samples:
        _, stderr = popen.communicate()
    if popen.returncode:
        raise SystemExit(f"fedbt run failed:\n{stderr.decode()[-3000:]}")
    return tmp / "run", time.perf_counter() - started, samples


def flower(args: argparse.Namespace, tmp: Path, mode: str) -> tuple[Path, float, TreeSampler]:
    """One Flower run in ``mode`` on a fresh local federation: (run directory, wall seconds, tree samples)."""
    settings = RunSettings(str(CONFIG), tuple(overrides(args, tmp)), "", False, False, 300.0)
    started = time.perf_counter()
    federation = LocalFederation(mode, args.clients, tmp / "flower", cwd=REPO)
    with TreeSampler(federation.tree, args.sample) as samples, federation:
        federation.run_or_raise(settings, timeout=1800)
    return tmp / "run", time.perf_counter() - started, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--examples-per-client", type=int, default=32)
    parser.add_argument("--sample", type=float, default=0.2, help="seconds between memory samples")
    args = parser.parse_args()

    results = {}
    for name, run in (
        ("in-process (fedbt run)", lambda tmp: in_process(args, tmp)),
        ("Flower simulation", lambda tmp: flower(args, tmp, "simulation")),
        ("Flower deployment", lambda tmp: flower(args, tmp, "deployment")),
    ):
        with tempfile.TemporaryDirectory(prefix="fedbt-bench-flower-") as tmp:
            run_dir, wall, samples = run(Path(tmp))
            metrics = json.loads((run_dir / "metrics.json").read_text())
            results[name] = {
                "round_seconds": [r["round_seconds"] for r in metrics["rounds"]],
                "train_loss": [r["train_loss"] for r in metrics["rounds"]],
                "wall": wall,
                "pss": samples.peak_pss,
                "rss": samples.peak_rss,
                "process": samples.peak_process_rss,
                "cpu": samples.cpu_seconds,
                "runtime": metrics["runtime"]["name"],
            }
        print(f"{name}: done in {wall:.1f} s", flush=True)

    print(
        f"\nFedAvg, MiniLM, {args.clients} clients x {args.rounds} rounds x {args.steps} steps "
        f"(batch {args.batch_size} x {args.max_length} tokens), {os.cpu_count()} CPUs"
    )
    base = results["in-process (fedbt run)"]
    columns = ("s/round", "x", "wall s", "x", "CPU s", "x", "PSS MiB", "x", "RSS MiB", "x", "1 proc MiB", "x")
    widths = (8, 6, 7, 6, 7, 6, 8, 6, 8, 6, 10, 6)
    header = " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))
    print(f"{'runtime':<24} {'round seconds':<22} {header}")
    for name, r in results.items():
        per_round = sum(r["round_seconds"]) / len(r["round_seconds"])
        base_round = sum(base["round_seconds"]) / len(base["round_seconds"])
        cells = [f"{per_round:8.1f}", f"{per_round / base_round:6.2f}", f"{r['wall']:7.1f}"]
        cells += [f"{r['wall'] / base['wall']:6.2f}", f"{r['cpu']:7.1f}", f"{r['cpu'] / base['cpu']:6.2f}"]
        for key, width in (("pss", 8), ("rss", 8), ("process", 10)):
            cells += [f"{r[key] / 2**20:{width}.0f}", f"{r[key] / base[key]:6.2f}"]
        print(f"{name:<24} {str([round(s, 1) for s in r['round_seconds']]):<22} " + " ".join(cells))
    print("\ntrain loss per round (same computation; thread counts differ between runtimes):")
    for name, r in results.items():
        print(f"  {name:<24} {r['train_loss']}  (metrics.json runtime: {r['runtime']})")


if __name__ == "__main__":
    main()
