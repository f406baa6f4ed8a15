"""The generic round loop of a federated run, and the client side it drives.

Per round: select clients; for each client ask the method for its :class:`ClientPlan` and encode the global
tensors it downloads (a :class:`ClientTask`); the client (:class:`LocalTrainer`) loads its local model (one
instance per local depth, reused across clients) from the tensors it received, marks the planned tensors
trainable, trains locally and encodes the trained tensors as its upload; bytes, FLOPs, seconds and memory go
into the ledger. Uploads stream into a weighted average; the method turns the average into new global
tensors, and the run's server optimizer (``server.optimizer``, or the method's own,
:mod:`fedbt.federated.server_optimizer`) steps on their pseudo-gradient; the round is checkpointed. Nothing here
knows a method by name.

A client with no examples, or whose plan trains nothing, sits the round out: nothing is sent or computed, it
has no weight in the average, and its ledger row says why (``status``); so does a client whose plan's memory
estimate exceeds its tier's budget under ``budget_policy: drop`` (status ``over-budget``, :mod:`fedbt.memory`:
a method with ``shrinks`` is first planned at the largest depth or width that fits). Every row carries its
plan's memory estimate and its tier's budget. A run that selects a round by its
scores (federated fine-tuning: the best dev round) keeps that round's global tensors, in memory and in the
checkpoint, so the model it saves is the model it reports.

Where clients train is a :class:`Runtime`: :class:`InProcess` trains them one after the other in this
process; :mod:`fedbt.flower` sends the same tasks to Flower ClientApps, which train them with the same
:class:`LocalTrainer`.

Resource tiers: each client's :class:`~fedbt.federated.tiers.Tier` (dealt by seed, ``setup.tiers``) goes to
``method.plan``; the ledger row names it. Method hooks run where they belong: the local optimizer, the extra
loss term, the client's state and the steps its tier runs (``method.local_steps``) in :class:`LocalTrainer` (in
process the state is kept here per client and saved in every checkpoint; over Flower it stays on the node,
:mod:`fedbt.flower.node_state`, and a task names the version it continues from; never counted as
communication), the server step in ``method.aggregate`` and the server optimizer (their tensor state saved in
every checkpoint). A plan with width slices (``slices``) downloads, trains and uploads those parts
of its tensors (its local model runs at their sizes, with HeteroFL's Scaler at ``scaler_rate``); the average
takes every element over the clients that hold it.
What a client downloads comes from ``method.download_tensors`` and each upload passes ``method.receive_upload``
(with the client's plan and tier) before the average, so a method can keep per-tier server state.

Devices (``setup.timing``, :mod:`fedbt.timing`): a client whose device is offline in a round sits it out
(``unavailable``); every other client's row gets its simulated time, and one later than the round's deadline is
dropped from the average (``missed-deadline``; :meth:`Simulator._timed`); the round's record gets its simulated
seconds (slowest participant or deadline, plus the server's measured aggregation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from fedbt.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedbt.config import LocalConfig, PrivacyConfig, ServerOptimizerConfig
from fedbt.costs import analytic_train_flops
from fedbt.errors import FedBTError
from fedbt.federated.aggregate import WeightedAverage, client_weight
from fedbt.federated.method import ClientPlan, LocalContext, Method, RoundInfo
from fedbt.federated.privacy import ServerPrivacy, privatize
from fedbt.federated.server_optimizer import server_optimizer_for
from fedbt.federated.tiers import FULL, Tier
from fedbt.ledger import (
    IDLE,
    MISSED_DEADLINE,
    NO_DATA,
    OVER_BUDGET,
    TRAINED,
    UNAVAILABLE,
    Ledger,
    LedgerRow,
    format_layers,
    payload_nbytes,
)
from fedbt.memory import Fitted, MemorySettings, fit_plan
from fedbt.models import (
    ModelArch,
    add_scalers,
    build_local_model,
    extract_to_global,
    load_from_global,
    local_to_global_names,
    slice_parameters,
)
from fedbt.progress import progress
from fedbt.seeding import derive_seed
from fedbt.timing import ClientTime, Timing, is_late, round_span
from fedbt.training import loop
from fedbt.training.objectives import Objective

log = logging.getLogger(__name__)

# Tags that keep the derived random streams apart.
SELECT, DATA, DROPOUT = 1, 2, 3


def select_clients(clients: int, fraction: float, seed: int, round_idx: int) -> list[int]:
    """A round's clients: all of ``clients``, or a seeded sample of ``fraction`` of them (at least one), in id
    order (the one rule the simulator and the planners draw them by)."""
    if fraction >= 1.0:
        return list(range(clients))
    k = max(1, round(fraction * clients))
    generator = torch.Generator().manual_seed(derive_seed(seed, SELECT, round_idx))
    return sorted(torch.randperm(clients, generator=generator)[:k].tolist())


@dataclass
class SimulationSetup:
    """Everything a simulation needs besides the method and the global model."""

    clients: Sequence[Sequence[dict]]
    objective: Objective
    local: LocalConfig
    rounds: int
    fraction: float
    aggregation: str
    seed: int
    device: torch.device
    tiers: Sequence[Tier] = ()
    """Each client's resource tier (empty: no tiers, every client holds the whole model)."""
    memory: MemorySettings | None = None
    """What a local step's memory estimate depends on (:mod:`fedbt.memory`; None: no estimates, no budgets)."""
    budget_policy: str = "warn"
    """``federation.budget_policy``: what a plan over its tier's ``memory_mb`` does (:func:`fedbt.memory.fit_plan`)."""
    server_optimizer: ServerOptimizerConfig | None = None
    """``server.optimizer``: run on the pseudo-gradient of what ``method.aggregate`` returns (None: none)."""
    privacy: PrivacyConfig | None = None
    """``privacy``: client-level differential privacy (:mod:`fedbt.federated.privacy`; None: none)."""
    timing: Timing | None = None
    """Each client's device and the round deadline (:mod:`fedbt.timing`; None: no simulated time)."""


@dataclass
class ClientTask:
    """What the server sends one client for one round: its plan and the global tensors it downloads.

    Everything a client needs beyond its own data and the starting model travels in a task (and comes back in a
    :class:`ClientUpdate`), so that a remote client (a Flower ClientApp, a new process each round) gets it too:
    a field added here (e.g. client state kept by the server and checkpointed) travels without further code.
    """

    round_idx: int
    client_id: int
    plan: ClientPlan
    download: dict[str, torch.Tensor]
    """The downloaded global tensors as the method encodes them (what travels)."""
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    """The client's own state from its last round (:meth:`Method.client_state`; not communication)."""
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    """The method's extra download (:meth:`Method.download_extra`; counted as download)."""
    num_clients: int = 1
    participants: tuple[int, ...] = ()
    """The round's participants (:attr:`~fedbt.federated.method.RoundInfo.participants`)."""
    state_round: int = -1
    """The last round in which the server took this client's update (-1: none): the version of its state a client
    that keeps its state itself (a Flower node, :mod:`fedbt.flower.node_state`) continues from."""


@dataclass
class ClientUpdate:
    """What one client sends back: its trained tensors and its ledger row (without the download counts)."""

    upload: dict[str, torch.Tensor]
    """The trained tensors as the method encodes them (what travels)."""
    row: LedgerRow
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    """The client's state for its next round (not communication)."""
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    """The method's extra upload (:meth:`Method.upload_extra`; counted as upload)."""
    update_norm: float | None = None
    """With ``privacy``: the L2 norm of the client's update before clipping (a diagnostic, not communication)."""


class LocalTrainer:
    """The client side: builds a client's local model out of the global tensors it received and trains it.

    ``template`` is a model of the global architecture (class and config; for methods with stale layers, its
    weights are the starting model's). The in-process runtime passes the global model itself; a Flower
    ClientApp passes its own copy of the starting model.
    """

    def __init__(self, template: nn.Module, method: Method, setup: SimulationSetup):
        self.template = template
        self.method = method
        self.setup = setup
        self.arch = ModelArch.from_model(template)
        if self.arch != method.arch:
            raise FedBTError(f"{method.name}: the global model's parameters differ from those the method planned for")
        self.clients = method.arrange_clients(setup.clients)
        self.steps_scale = len(setup.clients) / len(self.clients)
        # a method that pools the clients (centralised training) trains in one place: no tiers there
        self.tiers = list(setup.tiers) if len(setup.tiers) == len(self.clients) else []
        self.initial_params = (
            {n: p.detach().clone() for n, p in template.named_parameters()} if method.uses_stale_layers else {}
        )
        self._local_models: dict[tuple, nn.Module] = {}
        self._loss_hook = type(method).local_loss is not Method.local_loss
        # the hooks that read the start values and the client's state (others need no copies of them)
        self._client_hooks = self._loss_hook or any(
            getattr(type(method), hook) is not getattr(Method, hook) for hook in ("client_state", "upload_extra")
        )
        clip = setup.local.clip_local_loss
        self.clip_local_loss = method.clip_local_loss if clip is None else clip

    def train(self, task: ClientTask) -> ClientUpdate:
        """Train client ``task.client_id`` on its data from the tensors of ``task``: its encoded upload, ledger row
        and new state."""
        setup, local, method, plan = self.setup, self.setup.local, self.method, task.plan
        examples = self.clients[task.client_id]
        received = method.decode(task.download)
        model, name_map = self._prepare_local_model(plan, received)
        fresh = {n: g for n, g in name_map.items() if not self._is_stale(n, plan)}
        steps = self._steps(task.round_idx, task.client_id, len(examples))
        context = self._context(task, model, fresh, received, steps)
        optimizer = method.local_optimizer(model, local) or loop.adamw(
            model, local.lr, local.weight_decay, local.fused_optimizer
        )
        torch.manual_seed(derive_seed(setup.seed, DROPOUT, task.round_idx, task.client_id))
        result = loop.train(
            model,
            setup.objective,
            examples,
            steps=context.steps,
            batch_size=local.batch_size,
            lr=local.lr,
            weight_decay=local.weight_decay,
            generator=torch.Generator().manual_seed(derive_seed(setup.seed, DATA, task.round_idx, task.client_id)),
            device=setup.device,
            precision=local.precision,
            max_grad_norm=local.max_grad_norm,
            flop_count_steps=local.flop_count_steps,
            optimizer=optimizer,
            extra_loss=(lambda: method.local_loss(context)) if self._loss_hook else None,
            clip_extra_loss=self.clip_local_loss,
            group_by_length=local.group_by_length,
            flops_model=lambda shapes: self._analytic_flops(plan, shapes),
        )
        trained, norm = extract_to_global(model, fresh, plan.trainable), None
        if setup.privacy is not None:  # clipped (and, distributed, noised) before the method encodes it
            keys = (setup.seed, task.round_idx, task.client_id, len(task.participants))
            trained, norm = privatize(trained, received, setup.privacy, *keys)
        upload = method.encode(trained)
        extra = {n: t.detach().cpu() for n, t in method.upload_extra(context).items()}
        row = self._row(task, len(examples), result, upload, extra)
        row.state_bytes = loop.training_state_bytes(model, optimizer)
        new_state = {n: t.detach().cpu() for n, t in method.client_state(context).items()}
        return ClientUpdate(upload, row, new_state, extra, norm)

    def _steps(self, round_idx: int, client_id: int, examples: int) -> int:
        """Local steps of a client with ``examples`` examples in a round (a fixed budget scales with the clients
        pooled; a non-integer one is dealt over the client-rounds, :func:`~fedbt.training.loop.dealt_steps`), as
        many of them as the method gives the client's tier (:meth:`Method.local_steps`)."""
        local = self.setup.local
        index = round_idx * len(self.clients) + client_id
        steps = loop.steps_for(examples, local.batch_size, local.epochs, local.steps, index)
        steps = max(1, round(steps * self.steps_scale)) if local.steps is not None else steps
        run = self.method.local_steps(self.tier_of(client_id), steps)
        if run < 1:
            raise FedBTError(f"{self.method.name}: local_steps gave client {client_id} {run} steps; at least 1")
        return run

    def tier_of(self, client_id: int) -> Tier:
        """The client's resource tier (:data:`~fedbt.federated.tiers.FULL` without tiers)."""
        return self.tiers[client_id] if self.tiers else FULL

    def _context(
        self,
        task: ClientTask,
        model: nn.Module,
        fresh: Mapping[str, str],
        received: Mapping[str, torch.Tensor],
        steps: int,
    ) -> LocalContext:
        """What the client-side hooks see; the received values and the state only for methods whose hooks read them."""
        device = self.setup.device
        trained = [(fresh[n], p) for n, p in model.named_parameters() if p.requires_grad]
        hooks = self._client_hooks
        start = {g: received[g].detach().to(device) for g, _ in trained} if hooks else {}
        state = {n: t.to(device) for n, t in task.state.items()} if hooks else {}
        return LocalContext(
            task.round_idx,
            task.client_id,
            task.plan,
            model,
            trained,
            start,
            state,
            steps,
            self.setup.local.lr,
            received_extra={n: t.to(device) for n, t in task.extra.items()},
            num_clients=task.num_clients,
            participants=task.participants,
        )

    def _row(
        self, task: ClientTask, examples: int, result: loop.TrainResult, upload: Mapping, extra: Mapping
    ) -> LedgerRow:
        """The client's ledger row (the server adds the download and the tier); the upload counts the extras."""
        plan = task.plan
        row = LedgerRow(round=task.round_idx, client=task.client_id, examples=examples)
        if self.method.transmits:
            row.upload_params, row.upload_bytes = message_nbytes(upload, extra)
        row.steps, row.tokens = result.steps, result.tokens
        row.trained_layers = format_layers(plan.trained_layers(self.arch))
        row.measured_flops, row.measured_steps = result.measured_flops, result.measured_steps
        row.analytic_flops = self._analytic_flops(plan, result.shapes)
        row.seconds, row.wall_seconds = result.seconds, result.wall_seconds
        row.peak_memory_bytes, row.train_loss = result.peak_memory_bytes, result.mean_loss
        return row

    def _analytic_flops(self, plan: ClientPlan, shapes: Mapping[int, Sequence[int]]) -> int:
        """Exact analytic FLOPs of steps of the given shapes (padded length -> sequences, predicted tokens)."""
        head = self.setup.objective.head
        return sum(analytic_train_flops(self.arch, plan, s, length, p, head=head) for length, (s, p) in shapes.items())

    def _is_stale(self, local_name: str, plan: ClientPlan) -> bool:
        """True for a local parameter at one of the plan's stale positions."""
        return self.arch.layer_of(local_name) in plan.stale_positions

    def _prepare_local_model(
        self, plan: ClientPlan, received: Mapping[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, str]]:
        """The cached local model of the plan's depth (and width slices), loaded from the received tensors, grads
        set."""
        depth = len(plan.layer_map)
        name_map = local_to_global_names(self.arch, plan.layer_map)
        slices = {n: plan.slices[g] for n, g in name_map.items() if g in plan.slices}
        key = (depth, plan.scaler_rate, *sorted(slices.items()))
        if key not in self._local_models:
            model = build_local_model(self.template, depth)
            slice_parameters(model, slices)
            add_scalers(model, plan.scaler_rate)
            model = self.method.prepare_model(model)
            if self.setup.local.compile:
                model.compile(dynamic=True)  # in place: parameter names stay those of the model
            self._local_models[key] = model
        model = self._local_models[key]
        stale = {n: g for n, g in name_map.items() if self._is_stale(n, plan)}
        load_from_global(model, received, {n: g for n, g in name_map.items() if n not in stale})
        load_from_global(model, self.initial_params, stale)
        for local_name, param in model.named_parameters():
            param.requires_grad_(name_map[local_name] in plan.trainable and local_name not in stale)
        return model, name_map


class Runtime(Protocol):
    """Where the clients of a round train."""

    name: str

    def train_clients(
        self, server: Simulator, round_idx: int, clients: list[int]
    ) -> Iterator[tuple[dict[str, torch.Tensor], LedgerRow]]:
        """Each selected client's decoded upload and ledger row, in client order."""
        ...

    def report(self) -> dict[str, Any]:
        """What the runtime measured, for the run's metrics (e.g. bytes on a real wire)."""
        ...


class InProcess:
    """Clients train one after the other in this process, on one reused local model per depth."""

    name = "in-process"

    def train_clients(
        self, server: Simulator, round_idx: int, clients: list[int]
    ) -> Iterator[tuple[dict[str, torch.Tensor], LedgerRow]]:
        for client_id in progress(clients, f"round {round_idx} clients", leave=False):
            yield server.train_client(round_idx, client_id)

    def report(self) -> dict[str, Any]:
        return {"name": self.name}


HOOKS = (
    "local_optimizer",
    "local_loss",
    "client_state",
    "local_steps",
    "upload_extra",
    "download_tensors",
    "download_extra",
    "receive_upload",
    "aggregate",
    "server_optimizer",
)
SERVER_OPTIMIZER = "server_optimizer/"
"""Key prefix of the server optimizer's state among the checkpoint's method tensors."""


def message_nbytes(tensors: Mapping[str, torch.Tensor], extra: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """Elements and bytes of a message: the (encoded) model tensors and the method's extras."""
    params, nbytes = payload_nbytes(tensors)
    extra_params, extra_bytes = payload_nbytes(extra)
    return params + extra_params, nbytes + extra_bytes


def training_rule(method: Method) -> list:
    """What besides the plans decides a method's training, for the plan digests: the hooks it overrides, with its
    name and options (empty for a method without hooks, so two such methods with equal plans share digests)."""
    hooks = [hook for hook in HOOKS if getattr(type(method), hook) is not getattr(Method, hook)]
    return [{"hooks": hooks, "method": method.name, "options": method.options_dict()}] if hooks else []


class Simulator:
    """Runs the rounds of one method on one global model, resuming from the last completed round."""

    def __init__(
        self,
        global_model: nn.Module,
        method: Method,
        setup: SimulationSetup,
        ledger: Ledger,
        checkpoint_dir: Path,
        fingerprint: str,
        round_eval: Callable[[nn.Module], dict[str, float]] | None = None,
        select: Callable[[list[dict]], int | None] | None = None,
        runtime: Runtime | None = None,
    ):
        """``select`` maps the records so far to the best round (None: no selection); its round's global tensors
        are kept (:meth:`restore_selected`). ``runtime`` is where clients train (default: :class:`InProcess`)."""
        self.global_model = global_model
        self.method = method
        self.setup = setup
        self.ledger = ledger
        self.checkpoint_dir = checkpoint_dir
        self.fingerprint = fingerprint
        self.round_eval = round_eval
        # Called with each round's record once it is checkpointed (after a resume, first with the restored ones).
        self.observers: list[Callable[[dict], None]] = []
        self.runtime = runtime or InProcess()
        self.trainer = LocalTrainer(global_model, method, setup)
        self.arch = self.trainer.arch
        self.clients = self.trainer.clients
        self.global_params = dict(global_model.named_parameters())
        self.shapes = {n: tuple(p.shape) for n, p in self.global_params.items()}
        self.tiers = self.trainer.tiers
        timing = setup.timing
        self.timing = timing if timing is not None and len(timing.devices) == len(self.clients) else None
        """The device model (None without one, or for a method that pools the clients: it trains in one place)."""
        self.client_states: dict[int, dict[str, torch.Tensor]] = {}
        self.last_trained: dict[int, int] = {}
        """Each client's last round with status ``trained`` (:attr:`ClientTask.state_round`)."""
        self._fitted: dict[tuple[int, int], Fitted] = {}
        self._deadline: float | None = None
        """The current round's deadline on the simulated clock (:meth:`_timed`)."""
        self._rounds: dict[int, RoundInfo] = {}
        self._extras: dict[int, dict[str, torch.Tensor]] = {}
        """This round's upload extras by client (:meth:`receive`), for the server step."""
        self.server_optimizer = server_optimizer_for(method, setup.server_optimizer)
        self.privacy = None
        if setup.privacy is not None:
            clients, fraction = len(self.clients), setup.fraction
            encodes = type(method).encode is not Method.encode
            self.privacy = ServerPrivacy(setup.privacy, setup.seed, clients, fraction, setup.rounds, encodes)
        self._rule = training_rule(method)
        if self.server_optimizer is not None:
            self._rule.append({"server_optimizer": self.server_optimizer.settings()})
        if setup.privacy is not None:  # clipping and noise change what is sent: runs with other settings differ
            self._rule.append({"privacy": dataclasses.asdict(setup.privacy)})
        self.records: list[dict] = []
        self.select = select
        self.best_round: int | None = None
        self.best_params: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------------------------ rounds

    def run(self) -> list[dict]:
        """Run (or finish) all rounds; returns one record per round."""
        start = self._resume()
        for record in self.records:  # restored from the checkpoint: observers catch up on rounds they missed
            self._notify(record)
        rounds = progress(range(start, self.setup.rounds), "rounds", total=self.setup.rounds, initial=start)
        for round_idx in rounds:
            self.records.append(self._run_round(round_idx))
            self._keep_selected(round_idx)
            self._checkpoint(round_idx)
            self._notify(self.records[-1])
        return self.records

    def _notify(self, record: dict) -> None:
        for observe in self.observers:
            observe(record)

    def _keep_selected(self, round_idx: int) -> None:
        if self.select is not None and self.select(self.records) == round_idx:
            self.best_round = round_idx
            self.best_params = {n: p.detach().cpu().clone() for n, p in self.global_params.items()}

    def restore_selected(self) -> int | None:
        """Write the selected round's global tensors into the global model; returns that round (None: no
        selection, the global model stays that of the last round)."""
        if self.best_params is not None:
            self._write_global(self.best_params)
        return self.best_round

    def selected_clients(self, round_idx: int) -> list[int]:
        """All clients, or a seeded sample of ``fraction`` of them (:func:`select_clients`)."""
        return select_clients(len(self.clients), self.setup.fraction, self.setup.seed, round_idx)

    def round_info(self, round_idx: int) -> RoundInfo:
        """The round's facts for the method's hooks: the number of clients and the round's participants."""
        if round_idx not in self._rounds:
            selected = self.selected_clients(round_idx)
            participants = tuple(c for c in selected if self._takes_part(round_idx, c, self.plan(round_idx, c)))
            self._rounds[round_idx] = RoundInfo(round_idx, len(self.clients), participants)
        return self._rounds[round_idx]

    def _run_round(self, round_idx: int) -> dict:
        started = time.perf_counter()
        server_seconds = 0.0
        average = WeightedAverage(self.shapes)
        rows: list[LedgerRow] = []
        plans = []
        clients = self.selected_clients(round_idx)
        weights: dict[int, float] = {}
        self._extras = {}
        updates = self.runtime.train_clients(self, round_idx, clients)
        if self.timing is not None:
            updates = self._timed(updates, dict(self.client_states))
        for payload, row in updates:
            if payload:
                weight = weights[row.client] = client_weight(row.examples, self.setup.aggregation)
                plan, tier = self.plan(round_idx, row.client), self.tier_of(row.client)
                average.add(self.method.receive_upload(plan, tier, payload, weight), weight, plan.slices)
            rows.append(row)
            plans.append(self._plan_summary(round_idx, row.client, row))
            del payload
        if weights:
            planned = self.round_info(round_idx)
            uploaded = tuple(client for client in planned.participants if client in weights)
            round_info = dataclasses.replace(planned, participants=uploaded, extras=self._extras, weights=weights)
            clock = loop.ComputeClock(self.setup.device)
            if self.privacy is not None:
                self.privacy.perturb(average, round_idx)
            self._write_global(self._server_step(average, round_info))
            server_seconds = clock.stop()[0]
        self._extras = {}
        self.ledger.append(rows)
        self.last_trained.update({row.client: round_idx for row in rows if row.status == TRAINED})
        trained = [r for r in rows if r.steps]
        total_examples = sum(r.examples for r in trained)
        record = {
            "round": round_idx,
            "clients": len(rows),
            "train_loss": sum(r.train_loss * r.examples for r in trained) / total_examples if trained else None,
            "upload_bytes": sum(r.upload_bytes for r in rows),
            "download_bytes": sum(r.download_bytes for r in rows),
            "client_seconds": sum(r.seconds for r in rows),
            "client_wall_seconds": sum(r.wall_seconds for r in rows),
            "measured_flops": sum(r.measured_flops for r in rows),
            "measured_steps": sum(r.measured_steps for r in rows),
            "analytic_flops": sum(r.analytic_flops for r in rows),
            "plan_sha256": hashlib.sha256(json.dumps(plans + self._rule).encode()).hexdigest(),
        }
        if self.privacy is not None:
            record.update(self.privacy.record(round_idx))
        if self.timing is not None:
            record.update(self._round_timing(rows, server_seconds))
        if self.round_eval is not None:
            record.update(self.round_eval(self.method.deploy(self.global_model)))
        record["round_seconds"] = time.perf_counter() - started
        log.info(
            "round %d: %s",
            round_idx,
            {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()},
        )
        return record

    # ------------------------------------------------------------------------ simulated time (fedbt.timing)

    def _timed(self, updates: Iterator[tuple[dict, LedgerRow]], states: dict) -> Iterator[tuple[dict, LedgerRow]]:
        """Each client's update with its simulated time; one later than the round's deadline is dropped.

        Every client trains first: its time comes from the exact counts of its row (the FLOPs of its real batches,
        its real upload), known only after training. A fixed deadline is decided client by client as updates
        stream in; a percentile deadline holds the round's updates until every time is known."""
        if self.timing.deadline_percentile is not None:
            updates = list(updates)
            times = [self._client_time(row).total for _, row in updates if row.status == TRAINED]
            self._deadline = self.timing.deadline(times)
        else:
            self._deadline = self.timing.deadline_s
        for payload, row in updates:
            if row.status == TRAINED:
                needed = self._client_time(row)
                row.sim_seconds = needed.total
                if is_late(needed.total, self._deadline):
                    payload, row = {}, self._late_row(row, needed, states)
            yield payload, row

    def _client_time(self, row: LedgerRow) -> ClientTime:
        """The simulated time of a trained row on its client's device."""
        flops = row.measured_flops or row.analytic_flops
        return self.timing.client_time(row.client, row.download_bytes, flops, row.upload_bytes)

    def _late_row(self, row: LedgerRow, needed: ClientTime, states: dict) -> LedgerRow:
        """A client past the deadline, dropped for the round: no upload, no weight, its state and extras those from
        before the round (``states``); its row keeps its download and the share of its work done by the deadline
        (FLOPs and seconds; no steps, no loss)."""
        if row.client in states:
            self.client_states[row.client] = states[row.client]
        else:
            self.client_states.pop(row.client, None)
        self._extras.pop(row.client, None)
        done = needed.compute_done(self._deadline)
        return dataclasses.replace(
            row,
            status=MISSED_DEADLINE,
            upload_params=0,
            upload_bytes=0,
            steps=0,
            tokens=0,
            measured_steps=0,
            train_loss=0.0,
            measured_flops=round(row.measured_flops * done),
            analytic_flops=round(row.analytic_flops * done),
            seconds=row.seconds * done,
            wall_seconds=row.wall_seconds * done,
        )

    def _round_timing(self, rows: list[LedgerRow], server_seconds: float) -> dict[str, float]:
        """The round's simulated seconds: its slowest participant (or the deadline, when someone is later) plus the
        server's measured aggregation; the deadline and how many clients missed it or were offline."""
        raced = [row.sim_seconds for row in rows if row.status in (TRAINED, MISSED_DEADLINE) and row.sim_seconds]
        record = {
            "sim_round_seconds": round_span(raced, self._deadline) + server_seconds,
            "sim_server_seconds": server_seconds,
            "deadline_missed": sum(row.status == MISSED_DEADLINE for row in rows),
            "unavailable": sum(row.status == UNAVAILABLE for row in rows),
        }
        return record | ({"sim_deadline_s": self._deadline} if self._deadline is not None else {})

    def _plan_summary(self, round_idx: int, client_id: int, row: LedgerRow) -> list:
        """What a client did, for the round's plan digest: its plan, status and upload size. Two runs with equal
        digests in every round trained and sent exactly the same tensors (the report warns about such rows)."""
        plan = self.plan(round_idx, client_id)
        summary = [
            client_id,
            list(plan.layer_map),
            sorted(plan.trainable),
            sorted(plan.stale_positions),
            row.status,
            row.upload_bytes,
        ]
        if plan.slices:
            summary.append(sorted(plan.slices.items()))
        return summary

    def train_client(self, round_idx: int, client_id: int) -> tuple[dict[str, torch.Tensor], LedgerRow]:
        """Train one client in one round from the current global model: its (decoded) upload and ledger row.

        A client with no examples, or a plan with nothing to train, sits the round out (no transfer, no compute,
        no weight in the average).
        """
        task = self.client_task(round_idx, client_id)
        if self.sits_out(task):
            return {}, self.idle_row(task)
        return self.receive(task, self.trainer.train(task))

    # ------------------------------------------------------------- the server's side of one client

    def tier_of(self, client_id: int) -> Tier:
        """The client's resource tier (:data:`~fedbt.federated.tiers.FULL` without tiers)."""
        return self.tiers[client_id] if self.tiers else FULL

    def fitted(self, round_idx: int, client_id: int) -> Fitted:
        """The method's plan for the client, given its tier, under its tier's memory budget and the budget policy
        (shrunk to fit, or emptied when the client sits the round out over budget)."""
        key = (round_idx, client_id)
        if key not in self._fitted:
            setup = self.setup
            tier = self.tier_of(client_id)
            self._fitted[key] = fit_plan(self.method, round_idx, client_id, tier, setup.memory, setup.budget_policy)
        return self._fitted[key]

    def plan(self, round_idx: int, client_id: int) -> ClientPlan:
        """The plan the client runs (:meth:`fitted`)."""
        return self.fitted(round_idx, client_id).plan

    def client_task(self, round_idx: int, client_id: int) -> ClientTask:
        """The client's plan for the round, the global tensors (or blocks) it downloads, encoded by the method, and
        the state it kept from its last round."""
        plan = self.plan(round_idx, client_id)
        round_info = self.round_info(round_idx)
        task = ClientTask(
            round_idx,
            client_id,
            plan,
            {},
            self.client_states.get(client_id, {}),
            num_clients=round_info.num_clients,
            participants=round_info.participants,
            state_round=self.last_trained.get(client_id, -1),
        )
        if not self.sits_out(task):
            tensors = self.method.download_tensors(plan, self.tier_of(client_id), self.global_params)
            task.download = self.method.encode(tensors)
            task.extra = self.method.download_extra(round_info, client_id, plan)
        return task

    def sits_out(self, task: ClientTask) -> bool:
        """A client with no examples, whose plan trains nothing, who is dealt no steps of a mean budget below 1, or
        whose device is offline sits the round out."""
        return not self._takes_part(task.round_idx, task.client_id, task.plan)

    def _takes_part(self, round_idx: int, client_id: int, plan: ClientPlan) -> bool:
        """The client has examples, its plan trains something, it is dealt steps and its device is available."""
        has_data, trains = bool(self.clients[client_id]), bool(plan.trainable)
        return has_data and trains and self._dealt_steps(round_idx, client_id) and self._available(round_idx, client_id)

    def _dealt_steps(self, round_idx: int, client_id: int) -> bool:
        """Whether the client-round is dealt any steps: always, but for a mean ``local.steps`` below 1 (a FLOP-matched
        budget, :mod:`fedbt.matching`), whose client-rounds run 0 or 1 steps."""
        steps = self.setup.local.steps
        if steps is None or steps >= 1:
            return True
        return loop.dealt_steps(steps, round_idx * len(self.clients) + client_id) > 0

    def _available(self, round_idx: int, client_id: int) -> bool:
        return self.timing is None or self.timing.available(round_idx, client_id)

    def idle_row(self, task: ClientTask) -> LedgerRow:
        """The ledger row of a client that sat the round out, saying why (``status``)."""
        examples = len(self.clients[task.client_id])
        fitted = self.fitted(task.round_idx, task.client_id)
        status = NO_DATA if not examples else OVER_BUDGET if fitted.dropped else IDLE
        if examples and not self._available(task.round_idx, task.client_id):
            status = UNAVAILABLE
        row = LedgerRow(round=task.round_idx, client=task.client_id, examples=examples, status=status)
        self._name_tier(row, fitted)
        return row

    def dropped_row(self, task: ClientTask, status: str) -> LedgerRow:
        """The ledger row of a client the runtime dropped for the round (``status``: ``failed`` or
        ``missed-deadline``): its download was sent and is counted; no upload, no weight, its state unchanged."""
        row = LedgerRow(round=task.round_idx, client=task.client_id, examples=len(self.clients[task.client_id]))
        row.status = status
        self._name_tier(row, self.fitted(task.round_idx, task.client_id))
        if self.method.transmits:
            row.download_params, row.download_bytes = message_nbytes(task.download, task.extra)
        return row

    def _name_tier(self, row: LedgerRow, fitted: Fitted) -> None:
        """The row's tier, its budget and the plan's memory estimate."""
        row.tier = self.tier_of(row.client).name if self.tiers else ""
        row.memory_budget_mb = fitted.budget_mb or 0.0
        row.memory_estimate_bytes = fitted.estimate.total if fitted.estimate else 0

    def receive(self, task: ClientTask, update: ClientUpdate) -> tuple[dict[str, torch.Tensor], LedgerRow]:
        """A client's update as the server takes it: the decoded upload and the row with the download counted and
        the tier named; the client's new state is kept for its next round."""
        row = update.row
        self._name_tier(row, self.fitted(task.round_idx, task.client_id))
        if self.method.transmits:
            row.download_params, row.download_bytes = message_nbytes(task.download, task.extra)
        if update.state:
            self.client_states[task.client_id] = update.state
        if update.extra:
            self._extras[task.client_id] = update.extra
        upload = self.method.decode(update.upload)
        if self.privacy is not None:
            sent = lambda: self.method.decode(task.download)  # noqa: E731
            upload = self.privacy.receive(task.client_id, upload, sent, update.update_norm)
        return upload, row

    def _server_step(self, average: WeightedAverage, round_info: RoundInfo) -> dict[str, torch.Tensor]:
        """The round's new global tensors: ``method.aggregate`` of the average (with the round's facts and upload
        extras), then the server optimizer (if any) on the pseudo-gradient of what it returned."""
        new = self.method.server_aggregate(self.global_params, average.result(self.global_params), round_info)
        return self.server_optimizer.step(self.global_params, new) if self.server_optimizer else new

    def _server_state(self) -> dict[str, torch.Tensor]:
        """The method's tensor state and the server optimizer's (keys prefixed :data:`SERVER_OPTIMIZER`)."""
        state = dict(self.method.state_tensors())
        if self.server_optimizer is not None:
            state.update({SERVER_OPTIMIZER + k: t for k, t in self.server_optimizer.state_tensors().items()})
        return state

    def _load_server_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`_server_state` returned."""
        own = {k: t for k, t in tensors.items() if not k.startswith(SERVER_OPTIMIZER)}
        self.method.load_state_tensors(own)
        if self.server_optimizer is not None:
            prefixed = {k.removeprefix(SERVER_OPTIMIZER): t for k, t in tensors.items() if k not in own}
            self.server_optimizer.load_state_tensors(prefixed)

    def _write_global(self, tensors: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in tensors.items():
                self.global_params[name].copy_(value)

    # -------------------------------------------------------------------------------- checkpoints

    def _checkpoint(self, round_idx: int) -> None:
        save_checkpoint(
            self.checkpoint_dir,
            Checkpoint(
                completed_round=round_idx,
                fingerprint=self.fingerprint,
                method_state=self.method.state_dict(),
                records=self.records,
                params=self.global_params,
                best_round=self.best_round,
                best_params=self.best_params,
                method_tensors=self._server_state(),
                client_states=self.client_states,
            ),
        )

    def _resume(self) -> int:
        """Load the last checkpoint if any; returns the first round still to run."""
        checkpoint = load_checkpoint(self.checkpoint_dir, self.fingerprint)
        if checkpoint is None:
            self.ledger.truncate_after(-1)
            return 0
        self._write_global(checkpoint.params)
        self.method.load_state_dict(checkpoint.method_state)
        self.records = checkpoint.records
        self.best_round, self.best_params = checkpoint.best_round, checkpoint.best_params
        self._load_server_state(checkpoint.method_tensors)
        self.client_states = checkpoint.client_states
        self.ledger.truncate_after(checkpoint.completed_round)
        self.last_trained = {row.client: row.round for row in self.ledger.rows() if row.status == TRAINED}
        log.info("resuming after round %d from %s", checkpoint.completed_round, self.checkpoint_dir)
        return checkpoint.completed_round + 1
