"""Per-round checkpoints (safetensors + JSON, no pickle) so that a killed run resumes.

After each completed round the run directory's ``checkpoint/`` holds the global parameters and a
``state.json`` with the completed round, the method's state, the per-round records and a fingerprint of
the config. Every client's randomness is derived from (seed, round, client), so no RNG state needs
saving: a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedbt.errors import FedBTError

WEIGHTS = "global.safetensors"
STATE = "state.json"


@dataclass
class Checkpoint:
    """A completed round's state."""

    completed_round: int
    fingerprint: str
    method_state: dict[str, Any]
    records: list[dict[str, Any]]
    params: dict[str, torch.Tensor]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    """Write weights first, then the state file that makes them count (both atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (WEIGHTS + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in checkpoint.params.items()}, str(tmp))
    os.replace(tmp, directory / WEIGHTS)
    state = {
        "completed_round": checkpoint.completed_round,
        "fingerprint": checkpoint.fingerprint,
        "method_state": checkpoint.method_state,
        "records": checkpoint.records,
    }
    _atomic_write_text(directory / STATE, json.dumps(state, indent=1))


def load_checkpoint(directory: Path, fingerprint: str) -> Checkpoint | None:
    """The last completed round in ``directory``, or None if there is none.

    A checkpoint written by a different config is an error (resuming it would mix two runs).
    """
    state_path = directory / STATE
    if not state_path.is_file():
        return None
    state = json.loads(state_path.read_text())
    if state["fingerprint"] != fingerprint:
        raise FedBTError(
            f"{directory} holds a checkpoint of a different config; pass a new --out, or --fresh to discard it"
        )
    return Checkpoint(
        completed_round=state["completed_round"],
        fingerprint=state["fingerprint"],
        method_state=state["method_state"],
        records=state["records"],
        params=load_file(str(directory / WEIGHTS)),
    )
