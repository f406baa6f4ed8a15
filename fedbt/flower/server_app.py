"""The fedbt ServerApp: ``fedbt run`` with Flower ClientApps as the clients.

:func:`main` reads the run settings (:mod:`fedbt.flower.runconfig`), validates the run config before anything
is loaded, finds the SuperNode of every partition (a ``query.partition`` message to each connected node) and
runs :func:`fedbt.run.execute` with :class:`FlowerClients` as its runtime: the run directory, ledger,
checkpoints (resume included), evaluation and MLflow run are those of ``fedbt run``, tagged
``fedbt.runtime = flower-simulation`` or ``flower-deployment``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid import InMemoryGrid

from fedbt.errors import FedBTError
from fedbt.federated.simulator import ClientTask, ClientUpdate, Simulator
from fedbt.flower import codec
from fedbt.flower.runconfig import RunSettings
from fedbt.ledger import LedgerRow

log = logging.getLogger(__name__)

TRAIN = "train"
PARTITION_QUERY = "query.partition"
# the counted tensor fields of ClientTask and ClientUpdate: the model tensors and the method's extras
TASK_RECORDS, UPLOAD_RECORDS = ("download", "extra"), ("upload", "extra")
POLL_SECONDS = 0.2

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured fedbt run over the SuperNodes of ``grid``."""
    from fedbt.cli import OFFLINE_DEFAULTS
    from fedbt.run import execute, fingerprint, prepare

    _log_to_stream()
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    settings = RunSettings.from_run_config(context.run_config)
    prepared = prepare(settings.load())
    nodes = find_partitions(grid, prepared.config.federation.clients, settings.wait_nodes)
    runtime = FlowerClients(grid, nodes, fingerprint(prepared.config), measure_wire=settings.wire)
    metrics = execute(prepared, fresh=settings.fresh, runtime=runtime)
    log.info("run directory %s: %s", prepared.out_dir, metrics["final"])


def _log_to_stream() -> None:
    """fedbt's own INFO logs (one line per round) into the run's log stream (``flwr run --stream``)."""
    logger = logging.getLogger("fedbt")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def runtime_name(grid: Grid) -> str:
    """``flower-simulation`` under Flower's simulation engine, ``flower-deployment`` with real SuperNodes."""
    return "flower-simulation" if isinstance(grid, InMemoryGrid) else "flower-deployment"


def find_partitions(grid: Grid, clients: int, wait_seconds: float) -> dict[int, int]:
    """The node id serving each partition id ``0..clients-1``, waiting up to ``wait_seconds`` for them."""
    deadline = time.monotonic() + wait_seconds
    found: dict[int, int] = {}
    while True:
        nodes = [n for n in grid.get_node_ids() if n not in found.values()]
        queries = [Message(RecordDict(), dst_node_id=node, message_type=PARTITION_QUERY) for node in nodes]
        for reply in grid.send_and_receive(queries, timeout=max(deadline - time.monotonic(), 1.0)):
            if reply.has_error():
                raise FedBTError(f"SuperNode {reply.metadata.src_node_id}: {reply.error.reason}")
            partition = int(reply.content.config_records["node"]["partition-id"])
            if partition in found:
                raise FedBTError(f"two SuperNodes have partition-id {partition}; give each node its own")
            found[partition] = reply.metadata.src_node_id
        missing = sorted(set(range(clients)) - set(found))
        if not missing:
            return {partition: found[partition] for partition in range(clients)}
        if time.monotonic() >= deadline:
            raise FedBTError(
                f"federation.clients = {clients} needs SuperNodes with partition-id 0..{clients - 1}; after "
                f"{wait_seconds:.0f} s none serves {missing} (found {sorted(found)}). Simulation: flwr run ... "
                f"--federation-config 'num-supernodes={clients}'; deployment: start one flower-supernode per "
                f"partition with --node-config 'partition-id=K num-partitions={clients}'"
            )
        time.sleep(1.0)


class FlowerClients:
    """A :class:`~fedbt.federated.simulator.Runtime`: a round's tasks go to the ClientApps as Flower messages.

    Every selected client that trains gets one ``train`` message, all of the round at once; replies are taken
    in client order, so the weighted average adds the same uploads in the same order as in-process training.
    """

    def __init__(self, grid: Grid, nodes: dict[int, int], fingerprint: str, measure_wire: bool = True):
        self.grid = grid
        self.nodes = nodes
        self.fingerprint = fingerprint
        self.measure_wire = measure_wire
        self.name = runtime_name(grid)
        self.wire_rows: list[dict[str, int]] = []

    def train_clients(
        self, server: Simulator, round_idx: int, clients: list[int]
    ) -> Iterator[tuple[dict[str, torch.Tensor], LedgerRow]]:
        tasks = [server.client_task(round_idx, client_id) for client_id in clients]
        cache = codec.ArrayCache()
        messages = {
            task.client_id: Message(
                self._content(task, cache),
                dst_node_id=self.nodes[task.client_id],
                message_type=TRAIN,
                group_id=str(round_idx),
            )
            for task in tasks
            if not server.sits_out(task)
        }
        del cache
        replies = self._exchange(messages)
        for task in tasks:
            if server.sits_out(task):
                yield {}, server.idle_row(task)
                continue
            reply = replies.pop(task.client_id)
            update = codec.from_content(ClientUpdate, reply.content)
            if self.measure_wire:
                self._count(task, messages.pop(task.client_id), reply)
            yield server.receive(task, update)

    def _content(self, task: ClientTask, cache: codec.ArrayCache) -> RecordDict:
        content = codec.to_content(task, cache)
        content["run"] = ConfigRecord({"fingerprint": self.fingerprint})
        return content

    def _exchange(self, messages: dict[int, Message]) -> dict[int, Message]:
        """Push the messages, then pull until every client replied; a client's error stops the run."""
        message_ids = list(self.grid.push_messages(list(messages.values())))
        client_of = {m.metadata.message_id: client for client, m in messages.items()}
        if len(message_ids) != len(messages):
            raise FedBTError(f"only {len(message_ids)} of {len(messages)} messages reached the SuperLink")
        pending, replies = set(message_ids), {}
        while pending:
            for reply in self.grid.pull_messages(pending):
                client = client_of[reply.metadata.reply_to_message_id]
                if reply.has_error():
                    raise FedBTError(f"client {client} (node {reply.metadata.src_node_id}): {reply.error.reason}")
                replies[client] = reply
                pending.discard(reply.metadata.reply_to_message_id)
            if pending:
                time.sleep(POLL_SECONDS)
        return replies

    def _count(self, task: ClientTask, sent: Message, reply: Message) -> None:
        down, up = codec.count_wire(sent, *TASK_RECORDS), codec.count_wire(reply, *UPLOAD_RECORDS)
        row = {"round": task.round_idx, "client": task.client_id}
        for direction, count in (("download", down), ("upload", up)):
            row.update(
                {
                    f"{direction}_tensors": count.tensors,
                    f"{direction}_payload_bytes": count.payload_bytes,
                    f"{direction}_duplicate_bytes": count.duplicate_bytes,
                    f"{direction}_message_bytes": count.message_bytes,
                    f"{direction}_framing_bytes": count.framing_bytes,
                }
            )
        self.wire_rows.append(row)

    def report(self) -> dict[str, Any]:
        """The runtime and, per client and round, the bytes of the messages that carried its task and update."""
        report: dict[str, Any] = {"name": self.name, "nodes": {str(k): v for k, v in self.nodes.items()}}
        if self.measure_wire and self.wire_rows:
            keys = [k for k in self.wire_rows[0] if k not in ("round", "client")]
            report["wire"] = {"totals": {k: sum(r[k] for r in self.wire_rows) for k in keys}, "rows": self.wire_rows}
        return report
