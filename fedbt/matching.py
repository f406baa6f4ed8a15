"""FLOP-matched budgets: the local work that gives one run the cumulative client FLOPs of another.

A study variant with ``match_flops: <variant>`` (``fedavg-matched``: FedAvg with FedBT's compute) runs, in every
study, data set and seed, at the local budget that makes its run's cumulative client FLOPs equal those of
``<variant>``'s run with the same settings. Both runs are planned weight-free, as the simulator plans them: every
round's selected clients, their tiers dealt by seed, each plan fitted to its tier's memory budget
(:func:`fedbt.memory.fit_plan`), the steps the method gives the tier (:meth:`Method.local_steps`). Each
client-round costs the analytic FLOPs of its plan (:func:`fedbt.costs.analytic_train_flops`) for one batch of
``model.max_length`` tokens (``mlm_probability`` of them predicted), times its local steps. The ratio of two
methods' costs does not depend on the sequence length beyond their attention terms, so the match holds for the
data's real lengths too; the data itself is not read, so planning needs no token cache.

The matched budget scales the run's own: a fixed ``local.steps`` becomes a (non-integer) mean per client-round,
dealt over the client-rounds (:func:`fedbt.training.loop.dealt_steps`; below 1 the client-rounds run 0 or 1 steps,
and one dealt 0 sits the round out: no transfer, no compute, no weight, as a client not sampled); a budget in
``local.epochs`` scales the epochs (every client-round of both runs then runs the same share of its data: the match
weighs client-rounds equally, exact where clients hold equal data).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import yaml

from fedbt.config import LocalConfig, ModelConfig, RunConfig, from_dict, to_yaml
from fedbt.errors import ConfigError
from fedbt.federated.method import Method
from fedbt.federated.tiers import Tier

MATCH_DIGITS = 4
"""Decimals a matched budget is rounded to (it names the run's setting, so it must not move with float noise)."""


@dataclass(frozen=True)
class Match:
    """A matched budget: the run-config key it sets (``local.steps`` or ``local.epochs``), its value, and the
    reference run's client FLOPs over the matched run's at its own budget (the factor applied)."""

    key: str
    value: float
    ratio: float

    def override(self) -> dict[str, float]:
        return {self.key: self.value}


def client_flops(config: RunConfig) -> int:
    """A run's analytic client FLOPs from its plans (see the module docstring): per client-round one batch of
    ``model.max_length`` tokens of its plan, times its local steps (one per client-round for an epochs budget)."""
    from fedbt.training.loop import steps_for

    local, clients = config.local, config.federation.clients
    plans = _plans(_planning_key(config))
    total = 0
    for index, tier, flops in plans.steps:
        steps = 1 if local.steps is None else steps_for(0, 1, 1.0, local.steps, index)
        total += plans.method.local_steps(tier, max(1, round(steps * clients / plans.arranged))) * flops
    return total


@dataclass(frozen=True)
class _Plans:
    """A run's method and, per trained client-round (its index ``round * clients + client``), its tier and the
    analytic FLOPs of one local step of its plan."""

    method: Method
    arranged: int
    """How many clients the method trains (centralised training pools them into one)."""
    steps: list[tuple[int, Tier, int]]


def _planning_key(config: RunConfig) -> str:
    """What a run's plans and their per-step FLOPs depend on (not its budget, learning rate or name), as YAML: the
    cache key of :func:`_plans`, from which the config is rebuilt."""
    local = config.local
    kept = LocalConfig(
        objective=local.objective,
        batch_size=local.batch_size,
        mlm_probability=local.mlm_probability,
        masked_only_logits=local.masked_only_logits,
        mim_mask_ratio=local.mim_mask_ratio,
        precision=local.precision,
    )
    planned = RunConfig(
        scenario=config.scenario,
        seed=config.seed,
        plugins=config.plugins,
        method=config.method,
        model=config.model,
        federation=config.federation,
        local=kept,
    )
    return to_yaml(planned)


@functools.cache
def _plans(key: str) -> _Plans:
    """The plans of the run config ``key`` (:func:`_planning_key`), as the simulator plans them."""
    from fedbt.costs import analytic_train_flops
    from fedbt.federated.simulator import select_clients
    from fedbt.federated.tiers import FULL, deal
    from fedbt.memory import fit_plan, memory_settings

    config = from_dict(RunConfig, yaml.safe_load(key))
    method = _method(config)
    fed, settings = config.federation, memory_settings(config, method.arch)
    arranged = len(method.arrange_clients([[index] for index in range(fed.clients)]))
    tiers = deal(method.tiers, fed.clients, config.seed) if fed.tiers and arranged == fed.clients else []
    batch = (settings.batch_size, settings.seq_len, settings.predicted)
    steps = []
    for round_idx in range(fed.rounds):
        for client in select_clients(arranged, fed.fraction, config.seed, round_idx):
            tier = tiers[client] if tiers else FULL
            plan = fit_plan(method, round_idx, client, tier, settings, fed.budget_policy).plan
            if plan.trainable:
                flops = analytic_train_flops(method.arch, plan, *batch, head=settings.head)
                steps.append((round_idx * arranged + client, tier, flops))
    return _Plans(method, arranged, steps)


def matched_budget(reference: RunConfig, own: RunConfig, key: str = "match_flops") -> Match:
    """The budget at which ``own`` spends ``reference``'s client FLOPs (``key``: where the match was asked for,
    for errors). Both budgets must be of one kind: fixed ``local.steps``, or ``local.epochs``."""
    if (reference.local.steps is None) != (own.local.steps is None):
        raise ConfigError(key, "the matched run and its reference must both set local.steps, or both local.epochs")
    wanted, spent = client_flops(reference), client_flops(own)
    if not spent:
        raise ConfigError(key, f"{own.method.name} trains nothing in this run: no budget matches its FLOPs")
    ratio = wanted / spent
    budget_key = "local.steps" if own.local.steps is not None else "local.epochs"
    budget = own.local.steps if own.local.steps is not None else own.local.epochs
    value = round(budget * ratio, MATCH_DIGITS)
    if value <= 0:
        raise ConfigError(
            key,
            f"{own.method.name} would run {value:g} local {budget_key.split('.')[1]} per client-round to match "
            f"{reference.method.name}'s client FLOPs ({ratio:.3g} of its own at {budget_key} = {budget:g}): "
            f"raise {budget_key}",
        )
    return Match(budget_key, value, ratio)


def _method(config: RunConfig) -> Method:
    """The run's method on a weight-free model of its architecture."""
    from fedbt.federated.method import create_method, get_method, load_plugins
    from fedbt.federated.tiers import tiers_from_config
    from fedbt.training.objectives import get_objective

    load_plugins(config.plugins)
    source = get_method(config.method.name).starting_model(config.method.options, config.model.source)
    model = dataclasses.replace(config.model, source=source)
    meta = _meta_model(yaml.safe_dump(dataclasses.asdict(model)), get_objective(config.local.objective).name)
    fed = config.federation
    tiers = tiers_from_config(fed.tiers)
    return create_method(
        config.method.name, meta, fed.rounds, config.seed, config.method.options, config.scenario, tiers
    )


@functools.cache
def _meta_model(model_yaml: str, head: str):
    """A weight-free model of a model config (as YAML) with ``head``, built once per planning process."""
    from fedbt.models import meta_model
    from fedbt.pipeline import planning_model_config

    model = from_dict(ModelConfig, yaml.safe_load(model_yaml))
    hf_config = planning_model_config(model)
    if hf_config is None:
        raise ConfigError("model.source", f"{model.source!r}: its architecture is not known without weights here")
    return meta_model(hf_config, head)
