"""GPU slot assignment for parallel jobs: each process claims one GPU through an exclusive lock file.

Snakemake counts ``resources: gpu=1`` against ``--resources gpu=N`` but assigns no device. With
``FEDBT_GPUS`` set (a count ``4`` or device ids ``0,2,3``), :func:`claim_from_env` takes the first free slot's
lock (``fcntl.flock``) in ``FEDBT_GPU_LOCK_DIR`` and sets ``CUDA_VISIBLE_DEVICES`` to that device before torch
starts. The lock is held by the open file until the process exits (also when it is killed), so a freed slot
is reused by the next job.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

ENV_GPUS = "FEDBT_GPUS"
ENV_LOCK_DIR = "FEDBT_GPU_LOCK_DIR"
_held: list[IO] = []  # open lock files of this process: closing one releases its slot


def parse_devices(spec: str, visible: str | None = None) -> list[str]:
    """Device ids from ``FEDBT_GPUS``: ``"4"`` means the first 4 visible devices (``visible`` is an existing
    ``CUDA_VISIBLE_DEVICES``, e.g. set by Slurm), ``"0,2,3"`` lists the ids (one id: ``"3,"``); ``""`` and
    ``"0"`` mean none."""
    spec = spec.strip()
    if not spec:
        return []
    if "," not in spec and spec.isdigit():
        pool = [d.strip() for d in visible.split(",") if d.strip()] if visible else None
        count = int(spec)
        return pool[:count] if pool is not None else [str(i) for i in range(count)]
    return [d.strip() for d in spec.split(",") if d.strip()]


def default_lock_dir() -> Path:
    """Per-user slot directory in the temporary directory (one machine, one pool)."""
    return Path(tempfile.gettempdir()) / f"fedbt-gpu-slots-{os.getuid()}"


def try_claim(devices: Sequence[str], lock_dir: Path) -> str | None:
    """Lock the first free device's slot file and return its id (None if all are taken); the lock lasts as
    long as this process (or until :func:`release`)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for device in devices:
        handle = (lock_dir / f"gpu-{device}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held.append(handle)
        return device
    return None


def claim_gpu(devices: Sequence[str], lock_dir: Path, timeout: float = 3600.0, poll: float = 0.5) -> str | None:
    """Wait (up to ``timeout`` seconds) for a free slot among ``devices``, claim it and set
    ``CUDA_VISIBLE_DEVICES``. Returns the device id, or None when ``devices`` is empty or none freed in time."""
    if not devices:
        return None
    deadline = time.monotonic() + timeout
    while (device := try_claim(devices, lock_dir)) is None:
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll)
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    return device


def claim_from_env() -> str | None:
    """Claim a GPU slot if ``FEDBT_GPUS`` asks for it (call before torch is imported); else do nothing."""
    devices = parse_devices(os.environ.get(ENV_GPUS, ""), os.environ.get("CUDA_VISIBLE_DEVICES"))
    lock_dir = Path(os.environ.get(ENV_LOCK_DIR) or default_lock_dir())
    return claim_gpu(devices, lock_dir)


def release() -> None:
    """Release every slot this process holds (normally left to process exit)."""
    while _held:
        _held.pop().close()
