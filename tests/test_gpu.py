"""GPU slot assignment on fake devices: concurrent claims get distinct slots, freed slots are reused."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from fedbt import gpu


def _claim_and_hold(lock_dir, devices, claimed, release):
    claimed.put(gpu.claim_gpu(devices, lock_dir, timeout=10, poll=0.05))
    release.wait(10)


def _claim_once(lock_dir, devices, timeout=0.3):
    device = gpu.claim_gpu(devices, lock_dir, timeout=timeout, poll=0.05)
    return device, os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.mark.parametrize(
    ("spec", "visible", "expected"),
    [
        ("", None, []),
        ("0", None, []),
        ("4", None, ["0", "1", "2", "3"]),
        ("2", "5,7,9", ["5", "7"]),
        ("1,3", None, ["1", "3"]),
        ("3,", None, ["3"]),
    ],
)
def test_parse_devices(spec, visible, expected):
    assert gpu.parse_devices(spec, visible) == expected


def test_parallel_processes_get_distinct_slots_and_a_freed_slot_is_reused(tmp_path):
    ctx = mp.get_context("spawn")
    devices = ["0", "1", "2"]
    claimed, release = ctx.Queue(), ctx.Event()
    workers = [ctx.Process(target=_claim_and_hold, args=(tmp_path, devices, claimed, release)) for _ in devices]
    for worker in workers:
        worker.start()
    got = sorted(claimed.get(timeout=30) for _ in workers)
    assert got == devices
    with ctx.Pool(1) as pool:  # every slot is held: a fourth claim times out
        assert pool.apply(_claim_once, (tmp_path, devices)) == (None, None)
    release.set()
    for worker in workers:
        worker.join(10)
    with ctx.Pool(1) as pool:  # the holders exited: their slots are free again
        assert pool.apply(_claim_once, (tmp_path, devices)) == ("0", "0")


def test_claim_in_process_sets_cuda_visible_devices_and_release_frees(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu.claim_gpu(["0", "1"], tmp_path) == "0"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert gpu.claim_gpu(["0", "1"], tmp_path) == "1"  # a second lock file handle conflicts like another job
    gpu.release()
    assert gpu.claim_gpu(["0", "1"], tmp_path) == "0"
    gpu.release()


def test_claim_from_env_does_nothing_without_fedbt_gpus(monkeypatch):
    monkeypatch.delenv(gpu.ENV_GPUS, raising=False)
    assert gpu.claim_from_env() is None
