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

from fedbt.errors import FedBTError
from fedbt.federated.simulator import ClientTask, ClientUpdate, Simulator
from fedbt.flower import codec
from fedbt.flower.runconfig import RunSettings
from fedbt.ledger import FAILED, MISSED_DEADLINE, LedgerRow

log = logging.getLogger(__name__)

TRAIN = "train"
PARTITION_QUERY = "query.partition"
# the counted tensor fields of ClientTask and ClientUpdate: the model tensors and the method's extras
TASK_RECORDS, UPLOAD_RECORDS = ("download", "extra"), ("upload", "extra")
STATE_RECORD = "state"
"""The client state's field in ClientTask and ClientUpdate: it travels, but is not communication in the ledger."""
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
    runtime = FlowerClients(grid, nodes, fingerprint(prepared.config), settings, settings.deadline(prepared.config))
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
    # Flower's public API names no base class for the simulation engine's grid; its class name is stable
    return "flower-simulation" if type(grid).__name__ == "InMemoryGrid" else "flower-deployment"


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
    in client order, so the weighted average adds the same uploads in the same order as in-process training. A
    client whose ClientApp raised, or that has not replied by the round's deadline (``deadline``: ``round-deadline``,
    else the run's ``federation.deadline_s``), is
    dropped for the round (ledger status ``failed`` / ``missed-deadline``, the reason in :meth:`report`); a
    setup error (:data:`~fedbt.flower.codec.SETUP_FAILED`), or a round in which every client raised, stops the run.
    """

    def __init__(
        self, grid: Grid, nodes: dict[int, int], fingerprint: str, settings: RunSettings, deadline: float | None = None
    ):
        self.grid = grid
        self.nodes = nodes
        self.fingerprint = fingerprint
        self.measure_wire = settings.wire
        self.round_deadline = settings.round_deadline if deadline is None else deadline
        self.name = runtime_name(grid)
        self.wire_rows: list[dict[str, int]] = []
        self.dropped: list[dict[str, Any]] = []

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
        _stop_on_setup_errors(replies, sent=len(messages))
        for task in tasks:
            if server.sits_out(task):
                yield {}, server.idle_row(task)
                continue
            reply = replies.pop(task.client_id, None)
            if reply is None or reply.has_error():
                yield {}, self._drop(server, task, reply)
                continue
            update = codec.from_content(ClientUpdate, reply.content)
            if self.measure_wire:
                self._count(task, messages.pop(task.client_id), reply)
            yield server.receive(task, update)

    def _content(self, task: ClientTask, cache: codec.ArrayCache) -> RecordDict:
        content = codec.to_content(task, cache)
        content["run"] = ConfigRecord({"fingerprint": self.fingerprint})
        return content

    def _exchange(self, messages: dict[int, Message]) -> dict[int, Message]:
        """Push the messages, then pull until every client replied or the round's deadline passed."""
        message_ids = list(self.grid.push_messages(list(messages.values())))
        client_of = {m.metadata.message_id: client for client, m in messages.items()}
        if len(message_ids) != len(messages):
            raise FedBTError(f"only {len(message_ids)} of {len(messages)} messages reached the SuperLink")
        deadline = time.monotonic() + self.round_deadline if self.round_deadline else float("inf")
        pending, replies = set(message_ids), {}
        while pending:
            for reply in self.grid.pull_messages(pending):
                replies[client_of[reply.metadata.reply_to_message_id]] = reply
                pending.discard(reply.metadata.reply_to_message_id)
            if pending and time.monotonic() >= deadline:
                break
            if pending:
                time.sleep(POLL_SECONDS)
        return replies

    def _drop(self, server: Simulator, task: ClientTask, reply: Message | None) -> LedgerRow:
        """The row of a client dropped for the round, its reason logged and kept for :meth:`report`."""
        if reply is None:
            status, reason = MISSED_DEADLINE, f"no reply within the round's deadline of {self.round_deadline:g} s"
        else:
            status, reason = FAILED, f"node {reply.metadata.src_node_id}: {reply.error.reason}"
        log.warning("round %d: client %d dropped (%s): %s", task.round_idx, task.client_id, status, reason)
        self.dropped.append({"round": task.round_idx, "client": task.client_id, "status": status, "reason": reason})
        return server.dropped_row(task, status)

    def _count(self, task: ClientTask, sent: Message, reply: Message) -> None:
        """The wire row of one client-round; the client state that rides in the messages (outside the ledger's
        payload: in process it never moves) is measured apart, as ``*_state_bytes``."""
        row = {"round": task.round_idx, "client": task.client_id}
        for direction, message, records in (("download", sent, TASK_RECORDS), ("upload", reply, UPLOAD_RECORDS)):
            count = codec.count_wire(message, *records)
            row.update(
                {
                    f"{direction}_tensors": count.tensors,
                    f"{direction}_payload_bytes": count.payload_bytes,
                    f"{direction}_duplicate_bytes": count.duplicate_bytes,
                    f"{direction}_message_bytes": count.message_bytes,
                    f"{direction}_framing_bytes": count.framing_bytes,
                    f"{direction}_state_bytes": codec.count_wire(message, STATE_RECORD).payload_bytes,
                }
            )
        self.wire_rows.append(row)

    def report(self) -> dict[str, Any]:
        """The runtime, the clients dropped in each round and why, and, per client and round, the bytes of the
        messages that carried its task and update."""
        report: dict[str, Any] = {"name": self.name, "nodes": {str(k): v for k, v in self.nodes.items()}}
        if self.dropped:
            report["dropped"] = self.dropped
        if self.measure_wire and self.wire_rows:
            keys = [k for k in self.wire_rows[0] if k not in ("round", "client")]
            report["wire"] = {"totals": {k: sum(r[k] for r in self.wire_rows) for k in keys}, "rows": self.wire_rows}
        return report


def _stop_on_setup_errors(replies: dict[int, Message], sent: int) -> None:
    """Raise on a ClientApp's setup error, or when every client of the round raised (a fault of the run, not of
    the devices); other errors drop their client for the round."""
    errors = {client: reply.error.reason for client, reply in replies.items() if reply.has_error()}
    setup = {client: reason for client, reason in errors.items() if codec.SETUP_FAILED in reason}
    if setup or (errors and len(errors) == sent):
        client, reason = next(iter((setup or errors).items()))
        raise FedBTError(f"client {client}: {reason}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
