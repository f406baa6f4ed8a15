"""The interface a federated method implements, and the registry that finds methods by name.

A method decides, for every round and client, *which* local model the client builds out of global layers
and *which* global tensors it trains and uploads (a :class:`ClientPlan`), given the client's resource
:class:`~fedbt.federated.tiers.Tier`. Everything else, loading the local model, training, counting bytes and
FLOPs, aggregating, checkpointing, tracking, is done by the generic simulator, so one method is one small
class. The same plans drive the weight-free cost tables.

Beyond the plan, a method may change local training and the server step through hooks (all optional):

* client side (run where the client trains: in this process, or in a Flower ClientApp, so they depend only on
  their arguments): :meth:`Method.local_optimizer` (the optimizer), :meth:`Method.local_loss` (an extra loss
  term, e.g. FedProx's proximal term), :meth:`Method.client_state` (state a client keeps across its rounds,
  e.g. FedDyn's correction or SCAFFOLD's own control variate; the server keeps it for the client and saves it in
  every checkpoint, so a resumed run continues exactly; it is not communication: what must travel goes through the
  message channel below), :meth:`Method.local_steps` (how many of the local steps a
  client of a tier runs: FedProx's variable local work);
* server side: :meth:`Method.aggregate` (the weighted average of the uploads to new global tensors, e.g. a
  server optimizer on the pseudo-gradient) with tensor state in :meth:`Method.state_tensors` (saved with every
  checkpoint); :meth:`Method.server_optimizer` (a server optimizer of :mod:`fedbt.federated.server_optimizer`
  the simulator runs after :meth:`Method.aggregate`, as the run's ``server.optimizer`` does for any method:
  ``fedadam``, ``fedyogi``); per-tier server state (InclusiveFL's per-depth heads) through
  :meth:`Method.download_tensors` (what a client of a plan and tier receives in place of the global tensors) and
  :meth:`Method.receive_upload` (each upload with its client's plan, tier and weight; returns the part that
  enters the plain average).
* the message channel: tensors beyond the model that travel, counted in the ledger like the model's:
  :meth:`Method.download_extra` (server side: what a client receives besides its model tensors, e.g. SCAFFOLD's
  server control variate) arrives as ``LocalContext.received_extra``; :meth:`Method.upload_extra` (client side,
  after training: e.g. SCAFFOLD's control-variate change) reaches :meth:`Method.aggregate` as
  ``RoundInfo.extras``. Server-side hooks get the round's facts (:class:`RoundInfo`: the round, the number of
  clients, the round's participants), client-side ones the same in their :class:`LocalContext`.

The order, per round: server ``download_tensors`` + ``encode`` and ``download_extra`` per participant; client
``decode``, ``local_steps``, ``local_optimizer``, ``local_loss`` at every step, then ``upload_extra``,
``client_state`` and ``encode``; server ``decode``, ``receive_upload`` per client, then ``aggregate`` and the
server optimizer (docs/adding-a-baseline.md draws it).

Registering::

    @register
    class MyMethod(Method):
        name = "my-method"
        description = "one line shown by `fedbt methods`"
        scenarios = ("pretrain", "finetune")

        @dataclass
        class Options:
            top_k: int = 2

        def plan(self, round_idx, client_id, tier=FULL):
            ...
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import inspect
import pkgutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fedbt.config import from_dict
from fedbt.errors import ConfigError
from fedbt.federated.tiers import FULL, Tier
from fedbt.models import ModelArch, Selection, select, selection_shape
from fedbt.seeding import derive_seed

if TYPE_CHECKING:
    from fedbt.config import LocalConfig
    from fedbt.federated.server_optimizer import ServerOptimizer


@dataclass(frozen=True)
class ClientPlan:
    """What one client does in one round.

    ``layer_map[j]`` is the global layer at local position ``j`` (so ``len(layer_map)`` is the local
    depth ``L_k``). ``trainable`` holds the *global* parameter names the client trains; exactly those are
    uploaded. The client downloads every global tensor its local model holds.
    """

    layer_map: tuple[int, ...]
    trainable: frozenset[str]
    stale_positions: frozenset[int] = frozenset()
    """Local positions that keep the copy of their global layer the client made from the *starting*
    model (not refreshed from the current global model, nothing downloaded for them). A stale copy is never
    trained or uploaded, even when its global layer is trainable at another position."""
    slices: dict[str, Selection] = field(default_factory=dict, hash=False)
    """Width slices (HeteroFL): global tensor -> the part of it the client holds instead of the whole tensor, per
    dimension the first ``n`` entries or the listed indices (:data:`fedbt.models.Selection`; all ints: the leading
    block ``tensor[:s0, :s1, ...]``). It downloads, trains and uploads only that part, its local model runs at
    those sizes; the server averages every element over the clients whose parts hold it."""
    scaler_rate: float = 1.0
    """HeteroFL's Scaler: while the client trains, the output of each width-sliced sub-layer is divided by this
    rate (:func:`fedbt.models.add_scalers`; 1: none)."""

    @property
    def sub_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shapes of the width-sliced tensors the client holds (global name -> shape)."""
        return {name: selection_shape(selection) for name, selection in self.slices.items()}

    def block(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The part of global tensor ``name`` the client holds: its width slice, or all of it."""
        selection = self.slices.get(name)
        return tensor if selection is None else select(tensor, selection)

    def download_names(self, arch: ModelArch) -> list[str]:
        """Global parameter names the client downloads to build its local model (each counted once)."""
        layers = {g for j, g in enumerate(self.layer_map) if j not in self.stale_positions}
        return [n for n in arch.names if arch.layer_of(n) is None or arch.layer_of(n) in layers]

    def trained_layers(self, arch: ModelArch) -> list[int]:
        """Sorted global layer indices with at least one trained tensor."""
        return sorted({arch.layer_of(n) for n in self.trainable} - {None})

    def trains_position(self, position: int, arch: ModelArch) -> bool:
        """True when local position ``position`` trains: its global layer has a trained tensor and it is not a
        stale copy."""
        if position in self.stale_positions:
            return False
        return any(n in self.trainable for n in arch.layer_params(self.layer_map[position]))


@dataclass(frozen=True)
class RoundInfo:
    """The facts of one round that the server-side hooks see (:meth:`Method.download_extra`,
    :meth:`Method.aggregate`)."""

    round_idx: int
    num_clients: int
    """Clients in the federation (all of them, not only the round's)."""
    participants: tuple[int, ...]
    """The round's selected clients that train (id order): a client with no data or an empty plan sits out."""
    extras: Mapping[int, Mapping[str, torch.Tensor]] = field(default_factory=dict)
    """For :meth:`Method.aggregate`: each client's :meth:`Method.upload_extra` as received (empty before)."""
    weights: Mapping[int, float] = field(default_factory=dict)
    """For :meth:`Method.aggregate`: each uploading client's aggregation weight (``federation.aggregation``)."""


@dataclass
class LocalContext:
    """What the client-side hooks see of one client's local training."""

    round_idx: int
    client_id: int
    plan: ClientPlan
    model: nn.Module
    """The local model being trained."""
    trained: list[tuple[str, nn.Parameter]]
    """The trained local parameters with their global names (a global layer held at several positions appears
    once per position)."""
    start: dict[str, torch.Tensor]
    """The received values of the trained tensors by global name: the global model's (or their blocks)."""
    state: dict[str, torch.Tensor]
    """The client's state from its last round (:meth:`Method.client_state`; empty in its first)."""
    steps: int
    lr: float
    received_extra: dict[str, torch.Tensor] = field(default_factory=dict)
    """What :meth:`Method.download_extra` sent this client for the round (counted as download)."""
    num_clients: int = 1
    """Clients in the federation."""
    participants: tuple[int, ...] = ()
    """The round's participants (:attr:`RoundInfo.participants`)."""


class Method:
    """Base class of federated methods; subclasses set the class attributes and implement :meth:`plan`."""

    name: ClassVar[str]
    description: ClassVar[str]
    scenarios: ClassVar[tuple[str, ...]] = ("pretrain", "finetune")
    uses_stale_layers: ClassVar[bool] = False
    """Set when plans use ``stale_positions``: the simulator then keeps a copy of the starting model."""
    transmits: ClassVar[bool] = True
    """False for training in one place (no communication): the ledger records no bytes."""
    shrinks: ClassVar[str | None] = None
    """The :class:`~fedbt.federated.tiers.Tier` attribute the method can reduce to fit a client's memory budget
    (``"local_layers"`` or ``"width"``; None: it cannot). Under ``federation.budget_policy`` drop or refuse,
    :func:`fedbt.memory.fit_plan` then plans the client at the largest value whose plan fits (depths down to 1,
    widths in steps of 1/8)."""
    clip_local_loss: ClassVar[bool] = True
    """Whether ``local.max_grad_norm`` clips the gradient of :meth:`local_loss` together with the objective's
    (True: the sum's gradient is clipped, FedProx's choice) or only the objective's, the term's gradient added after
    clipping (False: a correction kept whole, SCAFFOLD's). The run's ``local.clip_local_loss`` overrides it."""

    @dataclass
    class Options:
        """Method options (``method.options`` in the config); a subclass declares its own dataclass."""

    def __init__(
        self,
        arch: ModelArch,
        rounds: int,
        seed: int,
        options: Mapping[str, Any] | None = None,
        tiers: Sequence[Tier] = (FULL,),
    ):
        self.arch = arch
        self.rounds = rounds
        self.seed = seed
        self.tiers = tuple(tiers) or (FULL,)
        """The run's resource tiers (for validation and cost tables; a client's own tier comes with its plan call)."""
        self.options = from_dict(self.Options, dict(options or {}), "method.options")
        self._check_tier_depths()
        self.validate()

    def _check_tier_depths(self) -> None:
        for tier in self.tiers:
            if tier.local_layers is not None and tier.local_layers > self.arch.num_layers:
                raise ConfigError(
                    f"{tier.key}.local_layers",
                    f"L_k = {tier.local_layers} exceeds the global model's {self.arch.num_layers} layers",
                )

    def validate(self) -> None:
        """Raise :class:`ConfigError` for impossible settings (including ones of ``self.tiers``); called before any
        training."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._plan_takes_tier = len(inspect.signature(cls.plan).parameters) >= 4
        cls._aggregate_takes_round = len(inspect.signature(cls.aggregate).parameters) >= 4

    def plan(self, round_idx: int, client_id: int, tier: Tier = FULL) -> ClientPlan:
        """The plan of ``client_id`` (of resource tier ``tier``) in round ``round_idx`` (0-based). Must be
        deterministic. A method that does not scale with client resources may declare ``plan(round_idx,
        client_id)`` without the tier: all its clients then get the same kind of plan."""
        raise NotImplementedError

    def client_plan(self, round_idx: int, client_id: int, tier: Tier = FULL) -> ClientPlan:
        """The plan of a client of tier ``tier``: :meth:`plan`, given the tier if it takes one (what the
        simulator and the cost tables call)."""
        if self._plan_takes_tier:
            return self.plan(round_idx, client_id, tier)
        return self.plan(round_idx, client_id)

    @classmethod
    def starting_model(cls, options: Mapping[str, Any], source: str) -> str:
        """The model source the federation starts from (default: the config's ``model.source``). A
        distillation baseline returns its student here."""
        return source

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Adapt a freshly built model before use, in place or by returning another one: called once on the
        global model and once on each local model instance (e.g. inject LoRA adapters, apply a mask)."""
        return model

    def arrange_clients(self, clients: Sequence[Sequence[dict]]) -> list[Sequence[dict]]:
        """The clients' data as the method trains it (default: the partition; centralised: one pool). With a
        fixed ``local.steps`` budget, a client's steps scale with the share of the partition it holds."""
        return list(clients)

    def encode(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What travels for ``tensors`` in either direction; its bytes are what the ledger counts."""
        return dict(tensors)

    def decode(self, encoded: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors an :meth:`encode`-d message stands for."""
        return dict(encoded)

    # -------------------------------------------------------------- client side: local training hooks

    def local_optimizer(self, model: nn.Module, local: LocalConfig) -> torch.optim.Optimizer | None:
        """The optimizer of one client's local training over ``model``'s trainable parameters, made afresh every
        round (None: AdamW with ``local.lr`` and ``local.weight_decay``, none on 1-D tensors, nor on ViT's
        class token, position embeddings and mask token: :func:`fedbt.training.loop.decays`)."""
        return None

    def local_loss(self, client: LocalContext) -> torch.Tensor | None:
        """An extra term added to the objective's loss at every local step (None: none). The ledger's train loss
        stays the objective's own."""
        return None

    def client_state(self, client: LocalContext) -> dict[str, torch.Tensor]:
        """What the client keeps for its next round, computed after local training (default: nothing). It comes
        back as ``client.state`` in the client's next round; it never counts as communication."""
        return {}

    def upload_extra(self, client: LocalContext) -> dict[str, torch.Tensor]:
        """Tensors the client sends besides its trained tensors, computed after local training (default: none).
        They travel as they are (no :meth:`encode`), count as upload in the ledger and reach :meth:`aggregate` in
        ``round.extras``."""
        return {}

    def extra_client_numel(self, plan: ClientPlan) -> int:
        """Elements of the tensors a client holds beyond its local model, gradients, optimizer moments and
        activations, at the parameters' dtype, for the memory estimate (:mod:`fedbt.memory`; e.g. FedProx's copy
        of the global trained tensors, a client's control variate: ``fedbt.memory.plan_numel(self.arch, plan,
        plan.trainable)``). Default: none (FedAvg, FedBT: adapters are parameters and already counted)."""
        return 0

    def local_steps(self, tier: Tier, steps: int) -> int:
        """The local steps (at least 1) a client of ``tier`` runs where the run gives it ``steps`` (``local.steps``,
        or those of ``local.epochs``); default: all of them. FedProx's clients run their tier's ``local_work``
        share (variable local work). The ledger's steps and FLOPs are those run."""
        return steps

    # --------------------------------------------------------------------------- server side: the step

    def download_tensors(
        self, plan: ClientPlan, tier: Tier, global_params: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The tensors, by global name, that a client of ``tier`` receives for ``plan`` (before :meth:`encode`;
        default: the global tensors of ``plan.download_names``, or their blocks). A method with per-tier server
        state sends its own copies under the global names."""
        return {n: plan.block(n, global_params[n]) for n in plan.download_names(self.arch)}

    def download_extra(self, round: RoundInfo, client_id: int, plan: ClientPlan) -> dict[str, torch.Tensor]:
        """Tensors a participant receives besides its model tensors (default: none; SCAFFOLD: the server control
        variate). They travel as they are (no :meth:`encode`), count as download in the ledger and reach the client
        as ``LocalContext.received_extra``."""
        return {}

    def receive_upload(
        self, plan: ClientPlan, tier: Tier, upload: Mapping[str, torch.Tensor], weight: float
    ) -> dict[str, torch.Tensor]:
        """Server side, per client: its decoded upload with its plan, tier and aggregation weight, before the
        round's weighted average; returns the part that enters that average and so :meth:`aggregate` (default: all
        of it). A method keeps what it holds back (e.g. per-tier averages) for its :meth:`aggregate`."""
        return dict(upload)

    def aggregate(
        self, global_params: Mapping[str, torch.Tensor], averaged: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Turn the weighted average of the uploads into the new global tensors (default: take it). A server
        optimizer keeps its state in attributes and returns them from :meth:`state_tensors`. Declared with a third
        argument, ``aggregate(global_params, averaged, round)``, it also gets the round's :class:`RoundInfo` with
        the clients' upload extras and weights."""
        return dict(averaged)

    def server_aggregate(
        self, global_params: Mapping[str, torch.Tensor], averaged: Mapping[str, torch.Tensor], round: RoundInfo
    ) -> dict[str, torch.Tensor]:
        """:meth:`aggregate`, given the round if it takes it (what the simulator calls)."""
        if self._aggregate_takes_round:
            return self.aggregate(global_params, averaged, round)
        return self.aggregate(global_params, averaged)

    def server_optimizer(self) -> ServerOptimizer | None:
        """The server optimizer the method runs on what :meth:`aggregate` returns (default: none; ``fedadam`` and
        ``fedyogi`` return theirs). The run's ``server.optimizer`` composes one with any method instead; a method
        with its own refuses a second. The simulator applies it and checkpoints its state."""
        return None

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensor state of the server step (e.g. optimizer moments), saved with every checkpoint (default: none)."""
        return {}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned, when a run resumes."""

    def deploy(self, global_model: nn.Module) -> nn.Module:
        """The model saved and evaluated after training (default: the global model itself)."""
        return global_model

    def report(self) -> dict[str, float]:
        """Extra scalar results of the method, merged into the run's final metrics (default: none)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable method state saved with each round's checkpoint (default: none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, when a run resumes."""

    def generator(self, *keys: int) -> torch.Generator:
        """A torch generator seeded from the run seed and ``keys`` (e.g. round, client): repeatable."""
        return torch.Generator().manual_seed(derive_seed(self.seed, *keys))

    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)


# ------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Method]] = {}
_BUILTIN_PACKAGES = ("baselines", "fedbt.methods")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"{cls.__name__} needs a class attribute 'name'")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        existing = _REGISTRY[name]
        if (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"method name {name!r} is already registered by {existing.__module__}")
    _REGISTRY[name] = cls
    return cls


def _load_builtin() -> None:
    for package_name in _BUILTIN_PACKAGES:
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError:
            continue
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package_name}.{info.name}")


def load_plugins(plugins: list[str]) -> None:
    """Import plugin modules (dotted names or ``.py`` paths) so that their methods register."""
    for index, plugin in enumerate(plugins):
        if plugin.endswith(".py"):
            path = Path(plugin)
            if not path.is_file():
                raise ConfigError(f"plugins[{index}]", f"file not found: {plugin}")
            spec = importlib.util.spec_from_file_location(f"fedbt_plugin_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(plugin)
            except ModuleNotFoundError as error:
                raise ConfigError(f"plugins[{index}]", f"cannot import {plugin!r}: {error}") from error


def available_methods() -> dict[str, type[Method]]:
    """Every registered method by name (built-in baselines and FedBT methods included)."""
    _load_builtin()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; an unknown name lists the known ones."""
    methods = available_methods()
    if name not in methods:
        raise ConfigError("method.name", f"unknown method {name!r}; known methods: {', '.join(methods)}")
    return methods[name]


def create_method(
    name: str,
    model: ModelArch | nn.Module,
    rounds: int,
    seed: int,
    options: Mapping[str, Any] | None,
    scenario: str,
    tiers: Sequence[Tier] = (FULL,),
) -> Method:
    """Instantiate and validate a method for a scenario and the run's resource tiers, before any training.

    Given a model (a meta-device one is enough), the method's arch is that of the model as the method
    prepares it (e.g. with LoRA adapters), computed on a copy.
    """
    cls = get_method(name)
    if scenario not in cls.scenarios:
        raise ConfigError(
            "method.name",
            f"{name} does not support scenario {scenario!r}; it supports: {', '.join(cls.scenarios)}",
        )
    if isinstance(model, ModelArch):
        return cls(model, rounds, seed, options, tiers)
    method = cls(ModelArch.from_model(model), rounds, seed, options, tiers)
    prepared = ModelArch.from_model(method.prepare_model(copy.deepcopy(model)))
    if prepared != method.arch:
        method.arch = prepared
        method.validate()
    return method
