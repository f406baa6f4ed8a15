"""A Flower federation on this machine, owned by one object: SuperLink and SuperNodes on 127.0.0.1.

:class:`LocalFederation` starts a SuperLink (``--simulation`` for Flower's simulation engine) and, for a
deployment, one SuperNode per partition (``--node-config 'partition-id=K num-partitions=N'``), each in its own
process group with its own ``FLWR_HOME`` under a work directory, on free loopback ports. :meth:`run` submits
the fedbt App with ``flwr run`` and waits until the run has finished. Every process started here carries an
environment variable with this federation's own id, and so do their descendants (SuperExec, ServerApp,
ClientApp and Ray processes, even once orphaned). Leaving the ``with`` block sends SIGTERM to each started
process group and, after a grace period, SIGKILL to every process that still carries the id.

Nothing here reaches beyond the loopback interface; runtime dependency installation, telemetry and update
checks are off.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import psutil

from fedbt.errors import FedBTError
from fedbt.flower import APP_DIR
from fedbt.flower.runconfig import RunSettings

Mode = Literal["simulation", "deployment"]
CONNECTION = "fedbt-local"
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
}
OWNER_VARIABLE = "FEDBT_FLOWER_FEDERATION"
STOP_GRACE_SECONDS = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class FlowerRun:
    """A finished ``flwr run``: its id, final status and the CLI's output."""

    run_id: str
    status: str
    output: str

    @property
    def succeeded(self) -> bool:
        return self.status == "finished:completed"


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen
    log: IO[bytes]


class LocalFederation:
    """SuperLink (+ SuperNodes) on 127.0.0.1 for one mode; a context manager that owns the processes."""

    def __init__(
        self,
        mode: Mode,
        supernodes: int,
        workdir: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ):
        if mode not in ("simulation", "deployment"):
            raise FedBTError(f"unknown Flower mode {mode!r}; allowed: simulation, deployment")
        if supernodes < 1:
            raise FedBTError(f"a federation needs at least one SuperNode, got {supernodes}")
        self.mode = mode
        self.supernodes = supernodes
        self.workdir = Path(workdir).resolve()
        self.cwd = Path(cwd or Path.cwd()).resolve()
        bin_dir = str(Path(sys.executable).parent)
        self.owner = uuid.uuid4().hex
        self.env = {**os.environ, **FLOWER_ENV, **(env or {}), OWNER_VARIABLE: self.owner}
        self.env["PATH"] = bin_dir + os.pathsep + self.env.get("PATH", "")
        self.bin = Path(bin_dir)
        self.port = 0
        self.processes: list[_Process] = []

    # ------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the SuperLink, wait until it answers, then the SuperNodes (deployment)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        link = ["--insecure", "--disable-runtime-dependency-installation", "--host", "127.0.0.1"]
        link += ["--port", str(self.port)] + (["--simulation"] if self.mode == "simulation" else [])
        self._spawn("superlink", ["flower-superlink", *link], self.home("superlink"))
        self._wait_healthy()
        self._write_cli_config()
        if self.mode == "deployment":
            for partition in range(self.supernodes):
                node_config = f"partition-id={partition} num-partitions={self.supernodes}"
                args = ["--insecure", "--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port())]
                args += ["--node-config", node_config]
                self._spawn(f"supernode-{partition}", ["flower-supernode", *args], self.home(f"supernode-{partition}"))

    def stop(self) -> None:
        """Stop every process started here and all their descendants (SIGTERM, then SIGKILL)."""
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
        leftovers = self.owned()
        for proc in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(leftovers, timeout=10)
        for process in self.processes:
            process.popen.poll()
            process.log.close()
        self.processes = []

    def owned(self) -> list[psutil.Process]:
        """Every live process that carries this federation's id (those started here and their descendants)."""
        owned = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(OWNER_VARIABLE) == self.owner:
                    owned.append(proc)
        return owned

    def tree(self) -> list[psutil.Process]:
        """The live processes started here and their current descendants (cheap; for memory sampling)."""
        tree = []
        for process in self.processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(process.popen.pid)
                tree += [root, *root.children(recursive=True)]
        return tree

    # ------------------------------------------------------------------------------------- runs

    def run(self, settings: RunSettings, timeout: float = 1800.0, app_dir: Path = APP_DIR) -> FlowerRun:
        """``flwr run`` the fedbt App with ``settings`` and wait until the run has finished."""
        run_config = self.workdir / f"run-config-{time.time_ns()}.toml"
        run_config.write_text(_toml(settings.as_run_config()))
        command = ["flwr", "run", str(app_dir), CONNECTION, "--run-config", str(run_config), "--stream"]
        if self.mode == "simulation":
            command += ["--federation-config", f"num-supernodes={self.supernodes}"]
        started = time.monotonic()
        result = self._cli(command, timeout)
        match = re.search(r"Successfully started run (\d+)", result.stdout)
        if result.returncode != 0 or not match:
            raise FedBTError(f"flwr run failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
        run_id = match.group(1)
        status = self._wait_finished(run_id, timeout - (time.monotonic() - started))
        return FlowerRun(run_id, status, result.stdout + result.stderr)

    def run_or_raise(self, settings: RunSettings, timeout: float = 1800.0) -> FlowerRun:
        """:meth:`run`, raising with the run's output and the SuperLink log unless it completed."""
        run = self.run(settings, timeout)
        if not run.succeeded:
            raise FedBTError(f"Flower run {run.run_id} ended {run.status}:\n{run.output[-6000:]}\n{self.logs()}")
        return run

    def logs(self, tail: int = 4000) -> str:
        """The last characters of each process's log."""
        parts = []
        for log in sorted(self.workdir.glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def home(self, name: str) -> Path:
        return self.workdir / name

    # -------------------------------------------------------------------------------- internals

    def _spawn(self, name: str, command: list[str], home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / f"{name}.log").open("wb")
        env = {**self.env, "FLWR_HOME": str(home)}
        command = [str(self.bin / command[0]), *command[1:]]
        popen = subprocess.Popen(
            command, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(_Process(name, popen, log))

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[0].popen.poll() is not None:
                raise FedBTError(f"flower-superlink exited with {self.processes[0].popen.returncode}:\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1.0).is_success:
                    return
            time.sleep(0.2)
        raise FedBTError(f"the SuperLink did not answer within {timeout:.0f} s:\n{self.logs()}")

    def _write_cli_config(self) -> None:
        """The ``flwr`` CLI's config (its own FLWR_HOME): one connection to this SuperLink."""
        cli_home = self.home("cli")
        cli_home.mkdir(parents=True, exist_ok=True)
        (cli_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )

    def _cli(self, command: list[str], timeout: float) -> subprocess.CompletedProcess:
        env = {**self.env, "FLWR_HOME": str(self.home("cli"))}
        command = [str(self.bin / command[0]), *command[1:]]
        try:
            return subprocess.run(command, cwd=self.cwd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise FedBTError(f"{' '.join(command[:3])} did not finish within {timeout:.0f} s") from error

    def _wait_finished(self, run_id: str, timeout: float) -> str:
        deadline = time.monotonic() + max(timeout, 10.0)
        while True:
            status = self._status(run_id)
            if status.startswith("finished"):
                return status
            if time.monotonic() >= deadline:
                raise FedBTError(f"Flower run {run_id} still {status!r} after the timeout:\n{self.logs()}")
            time.sleep(1.0)

    def _status(self, run_id: str) -> str:
        result = self._cli(["flwr", "ls", CONNECTION, "--run-id", run_id, "--format", "json"], 60)
        try:
            runs = json.loads(result.stdout)["runs"]
        except (json.JSONDecodeError, KeyError) as error:
            raise FedBTError(f"flwr ls: unexpected output:\n{result.stdout}\n{result.stderr}") from error
        return str(runs[0]["status"])


def _toml(values: dict[str, Any]) -> str:
    """A flat TOML table of strings, booleans and numbers."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    return "\n".join(lines) + "\n"
