"""``make test-slurm``: the Slurm profile (``profiles/slurm``) on a real single-node Slurm started on this machine.

Needs root and Debian's ``slurm-wlm`` (22.05) and ``munge`` (installed if missing). The cluster's config is
written to Slurm's default place, ``/etc/slurm/slurm.conf`` (and ``gres.conf``), because the executor plugin's job
step drops ``SLURM_CONF`` from the environment of its inner ``srun``; the check refuses to run where a
``slurm.conf`` already exists and removes its own at the end. Keys, sockets, state and logs live in a temporary
folder, the daemons listen on free ports of 127.0.0.1, and they are stopped at the end.

1. A CPU-only node: ``sbatch --gpus=1`` is refused (why ``resources.gpus: 0`` matters), then the tiny test study
   (``config/test.yaml``, ``resources.gpus: 0``) runs through ``--profile profiles/slurm`` into a temporary
   results folder; its sbatch jobs (as many as :class:`fedbt.pipeline.Plan` plans: runs, tokenize jobs and the
   report), its tables and MLflow runs (each with its ``SLURM_JOB_ID``) are checked.
2. The same node with two fake GPUs (``Gres=gpu:2``, gres.conf ``File=/dev/null`` and ``/dev/zero``): one job of
   the study with ``resources.gpus: 1`` is submitted with ``--gpus=1``, and Slurm sets its
   ``CUDA_VISIBLE_DEVICES=0``.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
JOB_MB = 1000
SLURM_ETC = Path("/etc/slurm")


def sh(*command: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise SystemExit(f"test-slurm: {' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def install() -> None:
    """Debian's slurm-wlm and munge, if not there yet."""
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", "sbatch", "squeue")):
        return
    started = time.monotonic()
    sh("apt-get", "update", "-qq")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh("apt-get", "install", "-y", "-qq", "slurm-wlm", "munge", env=env)
    print(f"installed slurm-wlm and munge in {time.monotonic() - started:.0f} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """munged, slurmctld and slurmd of one node, configured and run from a private folder."""

    def __init__(self, home: Path):
        self.home = home
        self.conf = SLURM_ETC / "slurm.conf"
        if self.conf.exists():
            raise SystemExit(f"test-slurm: {self.conf} exists (a Slurm set up here, or another test-slurm running)")
        self.node = platform.node()
        self.ports = (free_port(), free_port())
        for folder in ("state", "spool", "log", "munge"):
            (home / folder).mkdir(parents=True, exist_ok=True)
        self.socket = home / "munge" / "munge.socket"
        self.env = dict(os.environ)
        self.pid_files = [home / "slurmd.pid", home / "slurmctld.pid", home / "munge" / "munged.pid"]

    def _hardware(self) -> str:
        """This machine's CPUs and memory as `slurmd -C` sees them (memory less a margin for the OS)."""
        line = sh("slurmd", "-C").stdout.splitlines()[0]
        fields = dict(item.split("=", 1) for item in line.split())
        memory = int(fields["RealMemory"]) - 2000
        keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
        return " ".join(f"{k}={fields[k]}" for k in keys) + f" RealMemory={memory}"

    def configure(self, gpus: int) -> None:
        home = self.home
        gres = f" Gres=gpu:{gpus}" if gpus else ""
        lines = [
            "ClusterName=fedbt-test",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={self.ports[0]}",
            f"SlurmdPort={self.ports[1]}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={home / 'state'}",
            f"SlurmdSpoolDir={home / 'spool'}",
            f"SlurmctldPidFile={home / 'slurmctld.pid'}",
            f"SlurmdPidFile={home / 'slurmd.pid'}",
            f"SlurmctldLogFile={home / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={home / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "MpiDefault=none",
            "ReturnToService=2",
            "MinJobAge=300",  # finished jobs stay visible to squeue (the profile's status command) for 5 minutes
            "SchedulerType=sched/backfill",
            *(["GresTypes=gpu"] if gpus else []),
            f"NodeName={self.node} NodeAddr=127.0.0.1 {self._hardware()}{gres} State=UNKNOWN",
            "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        SLURM_ETC.mkdir(exist_ok=True)
        self.conf.write_text("\n".join(lines) + "\n")
        fakes = ["/dev/null", "/dev/zero"][:gpus]
        (SLURM_ETC / "gres.conf").write_text("".join(f"Name=gpu File={f}\n" for f in fakes))

    def start(self) -> float:
        """Start the daemons and wait until the node is idle; returns the seconds it took."""
        started = time.monotonic()
        key = self.home / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
            munge = self.home / "munge"
            sh(
                "munged",
                "--force",
                f"--socket={self.socket}",
                f"--key-file={key}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            )
        sh("slurmctld", "-f", str(self.conf), env=self.env)
        sh("slurmd", "-f", str(self.conf), env=self.env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = sh("sinfo", "-h", "-o", "%T", check=False, env=self.env).stdout.strip()
            if state == "idle":
                return time.monotonic() - started
            time.sleep(1)
        raise SystemExit(f"test-slurm: the node is not idle but {state!r}; see {self.home / 'log'}")

    def stop_slurm(self) -> None:
        """Stop slurmd and slurmctld (the daemons this script started, by their pid files)."""
        for pid_file in self.pid_files[:2]:
            self._stop(pid_file)

    def stop(self) -> None:
        """Stop every daemon started here and remove the config files written."""
        for pid_file in self.pid_files:
            self._stop(pid_file)
        for name in ("slurm.conf", "gres.conf"):
            (SLURM_ETC / name).unlink(missing_ok=True)

    @staticmethod
    def _stop(pid_file: Path) -> None:
        if not pid_file.is_file():
            return
        pid = int(pid_file.read_text().split()[0])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def snakemake(cluster: Cluster, work: Path, config: Path, *targets: str) -> tuple[subprocess.CompletedProcess, float]:
    """The study through the Slurm profile (SIGINT, not SIGTERM, stops Snakemake if it runs too long)."""
    command = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(work), "--configfile", str(config)]
    command += ["--profile", str(ROOT / "profiles" / "slurm"), "--jobs", "4", *targets]
    command += ["--slurm-init-seconds-before-status-checks", "5"]  # tiny jobs: poll sooner than the default 40 s
    env = {**cluster.env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        output = process.communicate(timeout=1200)[0]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=120)[0]
    (work / "snakemake.log").write_text(output)
    return subprocess.CompletedProcess(command, process.returncode, output, ""), time.monotonic() - started


def study_config(work: Path, gpus: int) -> Path:
    """config/test.yaml with this folder's data path, `gpus` GPUs and 1 GB per job."""
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config["data_dir"] = str(ROOT / "data")
    config["resources"] = {"gpus": gpus, "mem_mb": JOB_MB, "runtime": 10}
    path = work / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def planned_jobs(config: Path) -> dict[str, int]:
    """Per rule, the jobs the pipeline plans for a study config (:class:`fedbt.pipeline.Plan`), each one sbatch
    job: the runs, their tokenize jobs, starting models, distilled students and the report."""
    from snakemake.utils import validate

    from fedbt.pipeline import Plan

    spec = yaml.safe_load(config.read_text())
    validate(spec, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))  # fills the schema's defaults
    plan = Plan(spec)
    return {
        "run": len(plan.jobs),
        "tokenize": len(plan.token_jobs()),
        "starting_model": len(spec.get("starting_models") or {}),
        "distill_student": len(spec.get("students") or {}),
        "report": 1,
    }


def mlflow_tags(work: Path) -> dict[str, dict[str, str]]:
    """Per finished MLflow run (by name), its tags."""
    with sqlite3.connect(work / "results" / "mlflow.db") as db:
        runs = dict(db.execute("select run_uuid, name from runs where status = 'FINISHED'"))
        tags: dict[str, dict[str, str]] = {name: {} for name in runs.values()}
        for run, key, value in db.execute("select run_uuid, key, value from tags"):
            if run in runs:
                tags[runs[run]][key] = value
    return tags


def main() -> int:
    if os.geteuid() != 0:
        raise SystemExit("test-slurm: run as root (it installs packages and starts Slurm's daemons)")
    install()
    failures: list[str] = []

    def check(condition: bool, what: str) -> None:
        print(f"  {'ok  ' if condition else 'FAIL'} {what}")
        if not condition:
            failures.append(what)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedbt-slurm-") as tmp:
        tmp = Path(tmp)
        cluster = Cluster(tmp / "cluster")
        try:
            cluster.configure(gpus=0)
            print(f"CPU node up in {cluster.start():.0f} s ({cluster.conf}, state in {cluster.home})")
            refused = sh("sbatch", "--gpus=1", "--wrap", "true", check=False, env=cluster.env)
            check(refused.returncode != 0 and "gres" in refused.stderr.lower(), "--gpus=1 refused on a CPU node")

            work = tmp / "cpu"
            work.mkdir()
            config = study_config(work, gpus=0)
            planned = planned_jobs(config)
            result, seconds = snakemake(cluster, work, config)
            print(f"test study through profiles/slurm: {seconds:.0f} s, exit {result.returncode}")
            check(result.returncode == 0, f"snakemake succeeded (log: {work / 'snakemake.log'})")
            submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", result.stdout)
            jobs = sum(planned.values())
            check(len(submitted) == jobs, f"{jobs} sbatch jobs, as planned ({planned}): {len(submitted)}")
            for study in ("pretrain", "finetune", "shared"):
                table = work / "results" / "tables" / f"{study}.md"
                check(table.is_file() and "| fedbt" in table.read_text(), f"table {study}.md with its rows")
            tags = mlflow_tags(work)
            check(len(tags) == planned["run"], f"{planned['run']} finished MLflow runs, one per run: {sorted(tags)}")
            in_jobs = bool(tags) and all(t.get("fedbt.env.SLURM_JOB_ID") in submitted for t in tags.values())
            check(in_jobs, "each run ran in its own sbatch job (tag fedbt.env.SLURM_JOB_ID)")

            cluster.stop_slurm()
            cluster.configure(gpus=2)
            print(f"node with 2 fake GPUs up in {cluster.start():.0f} s")
            work = tmp / "gpu"
            work.mkdir()
            target = "results/runs/pretrain/cs/fedbt/seed0/metrics.json"
            result, seconds = snakemake(cluster, work, study_config(work, gpus=1), target)
            print(f"one job with --gpus=1: {seconds:.0f} s, exit {result.returncode}")
            check(result.returncode == 0, f"snakemake succeeded (log: {work / 'snakemake.log'})")
            tags = mlflow_tags(work).get("cs-fedbt-seed0", {})
            job = tags.get("fedbt.env.SLURM_JOB_ID", "")
            check(tags.get("fedbt.env.CUDA_VISIBLE_DEVICES") == "0", "Slurm set CUDA_VISIBLE_DEVICES=0 for the job")
            shown = sh("scontrol", "show", "job", job, check=False, env=cluster.env).stdout
            check(bool(job) and ("gres/gpu=1" in shown or "gpu:1" in shown), f"job {job} was granted one GPU")
        finally:
            cluster.stop()
            if failures:
                logs = tmp / "cluster" / "log"
                for log in sorted(logs.glob("*.log")):
                    print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text().splitlines()[-15:]))
                for log in sorted(tmp.glob("*/snakemake.log")) + sorted(tmp.glob("*/.snakemake/slurm_logs/**/*.log")):
                    print(f"--- {log} (last lines)\n" + "\n".join(log.read_text().splitlines()[-30:]))
    print(f"test-slurm: {time.monotonic() - started:.0f} s in all")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
