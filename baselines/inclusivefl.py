"""InclusiveFL (Liu et al., KDD 2022, "No One Left Behind: Inclusive Federated Learning over Heterogeneous Devices"),
built after the authors' code (github.com/Rachelxuan11/InclusiveFL: ``InclusiveFL/server.py``, ``run_fl.py`` with
the README's flags ``--local_cls --local_one --local_pooler --mom_grad --mom_beta 0.2``).

Depth groups: a client whose tier has local depth ``L_k`` (``local_layers``; unset: ``L_G``) builds the global
model's bottom ``L_k`` layers with its group's head on top, trains all of it and uploads it. The group of depth
``L_G`` is the global model itself; every shallower group ``d`` has server-side state of its own, its head (the
authors' local classifier and pooler; for MLM the transform and output bias) and its top layer ``d - 1`` (their
``leave_one_names``), copied from the global model when the group first downloads and sent to its clients in
place of the global tensors (a client whose plan is shrunk to fit its memory budget, ``shrinks``, joins the group
of the depth it runs). Per round (weights ``n_k``, or 1 with uniform aggregation):

* every other tensor (embeddings, layers below a group's top, the full group's top layer and head) is averaged
  over the clients of every group that holds it below its own top (``HeteAgg``): a shallow group's top layer
  never enters the global average, and its head stays apart from every other depth's;
* a shallow group's head is the mean of its own clients' uploads;
* a shallow group's top layer ``w`` gets the momentum knowledge distillation (``HeteAgg_mom`` and
  ``Aggregator_mom.load_grad_mem``): ``w <- w + (1 - beta) D + beta m``, with ``D`` its clients' mean upload
  minus ``w`` and ``m`` the mean, over layers ``d - 1 .. d' - 1`` (weight ``1 / (d' - d + 1)`` each), of the
  update that the next deeper group that trained (depth ``d'``) made to that layer in an earlier round (its mean
  upload minus what it downloaded; zero before any). ``beta`` (option ``beta``) is 0.2, the code's
  ``--mom_beta`` default and the README's setting.

The deployed model is the full-depth global model with its head. Where this differs from the authors' code: there
each group's pooled gradient steps a server-side AdamW of its own (learning rates 2e-4 / 5e-5 / 5e-5, a linear
schedule) and gradients are what is distilled; here clients train as every method of the suite does (one
``local.lr``) and the updates ``D`` and ``m`` are model deltas, the FedAvg form of a gradient. The code's
momentum is applied only while it is still the integer 0 (``isinstance(..., int)``), i.e. in round 0 alone, and
it assigns rather than sums over the deeper layers (keeping the last one times ``1 / (d' - d + 1)``); both read
as slips, so here the mean over the layers is applied in every round the group trains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedbt.errors import ConfigError
from fedbt.federated.aggregate import WeightedAverage
from fedbt.federated.method import ClientPlan, Method, register
from fedbt.federated.tiers import FULL, Tier
from fedbt.models import ModelArch

OWN, MOMENTUM = "own", "momentum"


@register
class InclusiveFL(Method):
    name = "inclusivefl"
    description = (
        "InclusiveFL (Liu et al. 2022): depth-L_k bottom layers, a head and top layer per depth, momentum "
        "distillation from deeper layers (option beta)"
    )
    scenarios = ("pretrain", "finetune")
    shrinks = "local_layers"

    @dataclass
    class Options:
        beta: float = 0.2

    def __init__(self, arch: ModelArch, rounds: int, seed: int, options=None, tiers: Sequence[Tier] = (FULL,)):
        self.own: dict[int, dict[str, torch.Tensor]] = {}
        """Per shallow depth: its head and top layer, by global name."""
        self.momentum: dict[int, dict[str, torch.Tensor]] = {}
        """Per shallow depth: the distilled update ``m`` of its top layer, by the top layer's global names."""
        self._groups: dict[int, WeightedAverage] = {}  # this round's uploads per depth
        super().__init__(arch, rounds, seed, options, tiers)

    def validate(self) -> None:
        if not 0 <= self.options.beta <= 1:
            raise ConfigError("method.options.beta", f"got {self.options.beta}, must be in [0, 1]")
        if all((t.local_layers or self.arch.num_layers) < self.arch.num_layers for t in self.tiers):
            raise ConfigError(
                "federation.tiers",
                "inclusivefl deploys the full-depth model: at least one tier needs local_layers unset or "
                f"{self.arch.num_layers} (the model's depth)",
            )

    def plan(self, round_idx: int, client_id: int, tier: Tier = FULL) -> ClientPlan:
        layer_map = tuple(range(tier.local_layers or self.arch.num_layers))
        trainable = ClientPlan(layer_map, frozenset()).download_names(self.arch)
        return ClientPlan(layer_map=layer_map, trainable=frozenset(trainable))

    def own_names(self, depth: int) -> list[str]:
        """The tensors a shallow group of ``depth`` keeps apart: its top layer ``depth - 1`` and its head."""
        return self.arch.layer_params(depth - 1) + self.arch.head_params()

    # ------------------------------------------------------------------------------------- server side

    def download_tensors(
        self, plan: ClientPlan, tier: Tier, global_params: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The global tensors, with a shallow group's own head and top layer in place of the global ones."""
        tensors = super().download_tensors(plan, tier, global_params)
        depth = len(plan.layer_map)
        if depth < self.arch.num_layers:
            if depth not in self.own:
                self.own[depth] = {n: global_params[n].detach().clone() for n in self.own_names(depth)}
            tensors.update(self.own[depth])
        return tensors

    def receive_upload(
        self, plan: ClientPlan, tier: Tier, upload: Mapping[str, torch.Tensor], weight: float
    ) -> dict[str, torch.Tensor]:
        """Keeps each depth group's mean of its layers and head; a shallow group's own tensors leave the plain
        average."""
        depth = len(plan.layer_map)
        group = {n: t for n, t in upload.items() if self.arch.layer_of(n) is not None or self.arch.is_head(n)}
        self._groups.setdefault(depth, WeightedAverage()).add(group, weight)
        own = set(self.own_names(depth)) if depth < self.arch.num_layers else set()
        return {n: t for n, t in upload.items() if n not in own}

    def aggregate(
        self, global_params: Mapping[str, torch.Tensor], averaged: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The plain average for the global model; each shallow group's head and distilled top layer."""
        means = {depth: group.result() for depth, group in sorted(self._groups.items())}
        self._groups = {}
        distilled = {depth: self._distilled(depth, means, global_params) for depth in self.own}
        beta = self.options.beta
        for depth, own in self.own.items():
            if depth not in means:
                continue
            for name in own:
                mean = means[depth][name].to(own[name].device)
                if self.arch.is_head(name):
                    own[name] = mean
                    continue
                momentum = self.momentum.get(depth, {}).get(name)
                distill = 0.0 if momentum is None else beta * momentum.to(own[name].device)
                own[name] = own[name] + (1 - beta) * (mean - own[name]) + distill
        self.momentum.update({d: m for d, m in distilled.items() if m is not None})
        return dict(averaged)

    def _distilled(
        self, depth: int, means: Mapping[int, Mapping[str, torch.Tensor]], global_params: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor] | None:
        """This round's ``m`` for the top layer of group ``depth``: the next deeper trained group's mean update of
        the layers ``depth - 1 .. d' - 1``, averaged over them (None: no deeper group trained)."""
        deeper = [d for d in means if d > depth]
        if not deeper:
            return None
        teacher = min(deeper)
        layers = range(depth - 1, teacher)
        downloaded = {**global_params, **self.own.get(teacher, {})}  # what the teacher's clients started from
        result = {}
        for name in self.arch.layer_params(depth - 1):
            sources = [self._at_layer(name, layer) for layer in layers]
            updates = [means[teacher][s] - downloaded[s].detach().to(means[teacher][s].device) for s in sources]
            result[name] = sum(updates) / len(layers)
        return result

    def _at_layer(self, name: str, layer: int) -> str:
        """The name of the tensor in ``layer`` that plays the part of layer tensor ``name``."""
        rest = name[len(self.arch.layer_prefix) :].split(".", 1)[1]
        return f"{self.arch.layer_prefix}{layer}.{rest}"

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The per-depth heads, top layers and distilled updates, keyed ``own|momentum/<depth>/<name>``."""
        tensors = {f"{OWN}/{d}/{n}": t for d, own in self.own.items() for n, t in own.items()}
        tensors.update({f"{MOMENTUM}/{d}/{n}": t for d, m in self.momentum.items() for n, t in m.items()})
        return tensors

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.own, self.momentum = {}, {}
        for key, tensor in tensors.items():
            kind, depth, name = key.split("/", 2)
            (self.own if kind == OWN else self.momentum).setdefault(int(depth), {})[name] = tensor
