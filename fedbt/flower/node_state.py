"""A client's own state kept on its node: never sent to the server, kept across rounds and across a resumed run.

A method's client state (:meth:`~fedbt.federated.method.Method.client_state`: FedDyn's correction, SCAFFOLD's
c_i) is produced by local training in round ``r`` and read by the client's next round. Over Flower it stays on
the node: each version lives in Flower's ``Context.state`` (the node's per-run store, an ``ArrayRecord`` per
version) and, for a resumed run (a new Flower run, with a fresh ``Context``), in a safetensors file on the
node's disk under the run directory (``<out_dir>/node-state/client-<k>/r<round>.safetensors``, relative paths
on each node's own file system).

The server does not hold the state, so it says which version a task continues from:
:attr:`~fedbt.federated.simulator.ClientTask.state_round`, the last round in which it took the client's update.
A version the server never took (the client was dropped, or the server died before its checkpoint) is simply
never asked for. Versions older than the one asked for are deleted: the server's checkpoints only move forward.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from safetensors.torch import load_file, save_file

from fedbt.errors import FedBTError
from fedbt.flower import codec

PREFIX = "fedbt.client-state.r"
FILE = re.compile(r"r(\d+)\.safetensors")


class NodeState:
    """The versions of one client's state on its node: in ``context.state`` and under ``directory``."""

    def __init__(self, context: Context, directory: Path):
        self.records = context.state  # a RecordDict: version key -> ArrayRecord
        self.directory = directory

    def load(self, round_idx: int) -> dict[str, torch.Tensor] | None:
        """The state produced in round ``round_idx`` (``{}`` for round -1: none yet), or None when it is not here."""
        if round_idx < 0:
            return {}
        record = self.records.get(f"{PREFIX}{round_idx}")
        if record is not None:
            return {name: codec.array_to_tensor(array) for name, array in record.items()}
        path = self.directory / f"r{round_idx}.safetensors"
        return load_file(str(path)) if path.is_file() else None

    def save(self, round_idx: int, state: dict[str, torch.Tensor], keep_from: int) -> None:
        """Keep ``state`` as round ``round_idx``'s version; delete the versions before round ``keep_from``."""
        self.records[f"{PREFIX}{round_idx}"] = ArrayRecord({n: codec.tensor_to_array(t) for n, t in state.items()})
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".r{round_idx}.safetensors.tmp"
        save_file({n: t.contiguous() for n, t in state.items()}, str(tmp))
        tmp.replace(self.directory / f"r{round_idx}.safetensors")
        for key in [k for k in list(self.records) if k.startswith(PREFIX) and int(k[len(PREFIX) :]) < keep_from]:
            del self.records[key]
        for path in self.directory.iterdir():
            match = FILE.fullmatch(path.name)
            if match and int(match.group(1)) < keep_from:
                path.unlink()


def continue_state(store: NodeState, round_idx: int, has_state: bool) -> dict[str, torch.Tensor]:
    """The state a task continues from, or a setup error when a stateful method's version is not on the node."""
    state = store.load(round_idx)
    if state is None and has_state:
        raise FedBTError(
            codec.SETUP_FAILED + f"the client state of round {round_idx} is not on this node (looked in its "
            f"Context.state and {store.directory}); a resumed run needs each node's run directory"
        )
    return state or {}
