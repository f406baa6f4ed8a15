"""Per-round checkpoints (safetensors + JSON, no pickle) so that a killed run resumes.

After each completed round the run directory's ``checkpoint/`` holds ``state.json`` (the completed round, the
method's state, the per-round records, a fingerprint of the config) and the weights files it names: the global
parameters of that round (``global-r<round>.safetensors``) and, for runs that select a round by its dev score,
the parameters of the selected round (``best-r<round>.safetensors``, or the same file when that is the last);
for methods with state in tensors, the server step's state (``method-r<round>.safetensors``, e.g. server optimizer
moments) and each client's own state (``clients-r<round>.safetensors``, keys ``<client>/<name>``).

A checkpoint is atomic: new weights files are written under new names first, then ``state.json`` is replaced
in one rename, and only then are the files it no longer names removed. A kill at any moment leaves a
``state.json`` whose weights are on disk. Every client's randomness is derived from (seed, round, client), so no
RNG state needs saving: a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedbt.errors import FedBTError

STATE = "state.json"


@dataclass
class Checkpoint:
    """A completed round's state (``best_round``/``best_params``: the round a selection rule picked so far)."""

    completed_round: int
    fingerprint: str
    method_state: dict[str, Any]
    records: list[dict[str, Any]]
    params: dict[str, torch.Tensor]
    best_round: int | None = None
    best_params: dict[str, torch.Tensor] | None = None
    method_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    client_states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _save_weights(path: Path, params: dict[str, torch.Tensor]) -> None:
    if path.is_file():  # already written by an earlier save of the same round
        return
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in params.items()}, str(tmp))
    os.replace(tmp, path)


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    """Write the round's weights files, then the state file that names them, then drop unnamed files."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = f"global-r{checkpoint.completed_round}.safetensors"
    _save_weights(directory / weights, checkpoint.params)
    best = None
    if checkpoint.best_round is not None:
        best = weights
        if checkpoint.best_round != checkpoint.completed_round:
            best = f"best-r{checkpoint.best_round}.safetensors"
            _save_weights(directory / best, checkpoint.best_params)
    extra = _save_states(directory, checkpoint)
    state = {
        "completed_round": checkpoint.completed_round,
        "fingerprint": checkpoint.fingerprint,
        "weights": weights,
        "best_round": checkpoint.best_round,
        "best_weights": best,
        "method_state": checkpoint.method_state,
        "records": checkpoint.records,
        **extra,
    }
    _atomic_write_text(directory / STATE, json.dumps(state, indent=1))
    for path in directory.glob("*.safetensors*"):
        if path.name not in (weights, best, *extra.values()):
            path.unlink(missing_ok=True)


def _save_states(directory: Path, checkpoint: Checkpoint) -> dict[str, str]:
    """Write the method's and the clients' state tensors of the round, if any; the state-file keys naming them."""
    files = {}
    round_idx = checkpoint.completed_round
    if checkpoint.method_tensors:
        files["method_tensors"] = f"method-r{round_idx}.safetensors"
        _save_weights(directory / files["method_tensors"], checkpoint.method_tensors)
    if checkpoint.client_states:
        files["client_states"] = f"clients-r{round_idx}.safetensors"
        flat = {
            f"{client}/{name}": t for client, state in checkpoint.client_states.items() for name, t in state.items()
        }
        _save_weights(directory / files["client_states"], flat)
    return files


def _load_client_states(path: Path) -> dict[int, dict[str, torch.Tensor]]:
    states: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(path)).items():
        client, _, name = key.partition("/")
        states.setdefault(int(client), {})[name] = tensor
    return states


def load_checkpoint(directory: Path, fingerprint: str) -> Checkpoint | None:
    """The last completed round in ``directory``, or None if there is none.

    A checkpoint written by a different config (training or evaluation settings) is an error: resuming it would
    mix two runs.
    """
    state_path = directory / STATE
    if not state_path.is_file():
        return None
    state = json.loads(state_path.read_text())
    if state["fingerprint"] != fingerprint:
        raise FedBTError(
            f"{directory} holds a checkpoint of a different config (training or evaluation settings changed); "
            "pass a new --out, or --fresh to discard it"
        )
    params = load_file(str(directory / state["weights"]))
    best = state.get("best_weights")
    return Checkpoint(
        completed_round=state["completed_round"],
        fingerprint=state["fingerprint"],
        method_state=state["method_state"],
        records=state["records"],
        params=params,
        best_round=state.get("best_round"),
        best_params=None if best is None else params if best == state["weights"] else load_file(str(directory / best)),
        method_tensors=load_file(str(directory / state["method_tensors"])) if "method_tensors" in state else {},
        client_states=_load_client_states(directory / state["client_states"]) if "client_states" in state else {},
    )
