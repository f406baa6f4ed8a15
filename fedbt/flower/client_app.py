"""The fedbt ClientApp: one client's local training, exactly as in ``fedbt run``.

On its first message a ClientApp process builds the run from the same Flower run config as the ServerApp
(:func:`fedbt.run.build_federation`: data, partition, the starting model prepared by the method, objective)
and a :class:`~fedbt.federated.simulator.LocalTrainer` on it; it keeps them for later messages of the same run
(Flower's simulation engine reuses its worker processes; a deployed SuperNode starts one process per message,
which then builds them again). A ``train`` message holds a :class:`~fedbt.federated.simulator.ClientTask`; the
reply holds the :class:`~fedbt.federated.simulator.ClientUpdate`. A node trains only its own partition
(``partition-id`` of its node config) and only for the run config the server sent the task for; failing that, or
failing to build the run, is a setup error that stops the run, while an error in training drops the node for the
round. The client's state (:meth:`~fedbt.federated.method.Method.client_state`) stays on the node
(:mod:`fedbt.flower.node_state`): the reply carries none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedbt.errors import FedBTError
from fedbt.federated.method import Method
from fedbt.federated.simulator import ClientTask, LocalTrainer
from fedbt.flower import codec
from fedbt.flower.node_state import NodeState, continue_state
from fedbt.flower.runconfig import RunSettings

app = ClientApp()


@dataclass
class LocalClient:
    """What a ClientApp process keeps for a run: the config's fingerprint, the trainer and where the node keeps
    its clients' state on disk."""

    fingerprint: str
    trainer: LocalTrainer
    state_dir: Path

    @property
    def has_state(self) -> bool:
        """Whether the method keeps client state (:meth:`~fedbt.federated.method.Method.client_state`)."""
        return type(self.trainer.method).client_state is not Method.client_state


@cache
def local_client(settings: RunSettings) -> LocalClient:
    """The run of ``settings`` built on this node (once per process)."""
    from fedbt.cli import OFFLINE_DEFAULTS
    from fedbt.run import build_federation, fingerprint, prepare

    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    prepared = prepare(settings.load())
    federation = build_federation(prepared)
    trainer = LocalTrainer(federation.global_model, prepared.method, federation.setup)
    return LocalClient(fingerprint(prepared.config), trainer, prepared.out_dir / "node-state")


@app.query("partition")
def partition(message: Message, context: Context) -> Message:
    """Tell the server which partition this node holds."""
    if "partition-id" not in context.node_config:
        raise FedBTError("this SuperNode has no partition-id: start it with --node-config 'partition-id=K ...'")
    node = ConfigRecord({"partition-id": int(context.node_config["partition-id"])})
    return Message(RecordDict({"node": node}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train the task of ``message`` on this node's partition; reply with the update."""
    task, client = _checked_task(message, context)
    store = NodeState(context, client.state_dir / f"client-{task.client_id}")
    task.state = continue_state(store, task.state_round, client.has_state)
    update = client.trainer.train(task)
    if client.has_state:
        store.save(task.round_idx, update.state or task.state, keep_from=task.state_round)
    update.state = {}  # the state stays on the node
    return Message(codec.to_content(update), reply_to=message)


def _checked_task(message: Message, context: Context) -> tuple[ClientTask, LocalClient]:
    """The task of ``message`` and this node's run, or a setup error (:data:`~fedbt.flower.codec.SETUP_FAILED`:
    the server stops the run) when the node cannot build the run or the task is not for it."""
    try:
        client = local_client(RunSettings.from_run_config(context.run_config))
        sent_for = message.content.config_records["run"]["fingerprint"]
        if sent_for != client.fingerprint:
            raise FedBTError("the server's run config differs from this node's: both must read the same run config")
        task = codec.from_content(ClientTask, message.content)
        own = int(context.node_config["partition-id"])
        if task.client_id != own:
            raise FedBTError(f"task for client {task.client_id} sent to the node of partition {own}")
    except FedBTError as error:
        raise FedBTError(codec.SETUP_FAILED + str(error)) from error
    return task, client
