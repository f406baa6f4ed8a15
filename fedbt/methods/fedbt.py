"""FedBT further pre-training: progressive training with deep sampling mapping, and its ablations.

Per round ``i`` the server picks the layer ``l = l(i)`` of the progressive schedule. Client ``k`` builds a
local model of depth ``L_k``: local positions ``0..l`` hold global layers ``0..l``, positions ``l+1..L_k-1``
hold deeper global layers drawn uniformly *with replacement* from ``{l+1..L_G-1}`` and sorted ascending
(drawn afresh per seed, round and client). Only local layer ``l`` and the output head's own tensors (for
MLM: transform + output bias; the tied decoder weight is the frozen word embedding) are trained and
uploaded; the server's ``n_k``-weighted average is written back into global layer ``l`` and the head.

Ablations (method.md 1.3), each registered under its own name. ``fedbt-no-s``, ``fedbt-no-m`` and
``fedbt-no-sp`` are *interpretations*: the journal's definitions are on a page we could not read.

=============== ==========================================================================================
``fedbt``       as above
``fedbt-all``   the same local model, every local tensor (embeddings, all local layers, head) trained
                and uploaded; a global layer held at several local positions is uploaded once, averaged
``fedbt-no-pl`` no progressive schedule: every round trains layer 0
``fedbt-no-s``  no sampling: positions ``l+1..`` hold the consecutive global layers ``l+1, l+2, ...``
``fedbt-no-m``  no mapping refresh: a client samples its deep layers once, in round 0, and keeps those
                copies (the starting model's weights) at positions ``l+1..`` in every later round; they are
                not re-downloaded
``fedbt-no-sp`` sequential schedule ``l(i) = i`` (one new layer per round)
=============== ==========================================================================================

The local depth is the option ``local_layers`` (default ``L_G // 2``: 6 for BERT-base, 3 for MiniLM). With
resource tiers (``federation.tiers``) each client builds a local model of its own tier's ``L_k`` (a tier without
``local_layers`` takes the option): deep sampling fills positions ``l+1..L_k-1`` of that client's model, so
every client trains and uploads layer ``l`` and the head, and weaker clients run fewer deep layers forward.
Every tier's ``L_k`` must exceed the deepest layer of the schedule. Under a memory budget that binds
(``federation.budget_policy`` drop or refuse) FedBT shrinks a client's ``L_k`` (``shrinks = "local_layers"``) to the
largest depth whose plan fits, never below ``l + 1`` (the layers ``0..l`` it trains on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedbt.errors import ConfigError
from fedbt.federated.method import ClientPlan, Method, register
from fedbt.federated.tiers import FULL, Tier

SAMPLING = 11  # tag of the deep-sampling random stream


def progressive_schedule(rounds: int) -> list[int]:
    """The paper's progressive layer schedule (method.md 1.2).

    Start with ``l = 0, r = I``; before round ``i``, if ``i == I - floor(r / 2)`` then ``l += 1`` and
    ``r = I - i``. ``I = 20`` gives ten rounds of layer 0, five of 1, three of 2, one of 3 and one of 4.
    """
    if rounds < 1:
        raise ConfigError("federation.rounds", f"got {rounds}, must be >= 1")
    layer, remaining, schedule = 0, rounds, []
    for i in range(rounds):
        if i == rounds - remaining // 2:
            layer += 1
            remaining = rounds - i
        schedule.append(layer)
    return schedule


def sample_deep_layers(generator: torch.Generator, low: int, high: int, count: int) -> list[int]:
    """``count`` global layer indices drawn uniformly with replacement from ``{low..high-1}``, sorted."""
    if count == 0:
        return []
    if low >= high:
        raise ConfigError("method.options.local_layers", f"no deeper layers to sample from {{{low}..{high - 1}}}")
    return sorted(torch.randint(low, high, (count,), generator=generator).tolist())


class FedBTPretrain(Method):
    """FedBT further pre-training; subclasses switch off one mechanism each (the ablations)."""

    scenarios = ("pretrain",)
    shrinks = "local_layers"
    schedule_kind: ClassVar[str] = "progressive"  # progressive | first | sequential
    sampling: ClassVar[bool] = True
    refresh_deep: ClassVar[bool] = True
    train_all: ClassVar[bool] = False

    @dataclass
    class Options:
        local_layers: int | None = None

    def validate(self) -> None:
        global_layers = self.arch.num_layers
        self.local_layers = self.options.local_layers or max(1, global_layers // 2)
        if not 1 <= self.local_layers <= global_layers:
            raise ConfigError(
                "method.options.local_layers",
                f"L_k = {self.local_layers} must be in 1..{global_layers} (L_G, the global model's depth)",
            )
        self.schedule = self.layer_schedule(self.rounds)
        deepest = max(self.schedule)
        for tier in self.tiers:
            depth = self.depth_of(tier)
            if deepest >= depth:
                key = f"{tier.key}.local_layers" if tier.local_layers else "method.options.local_layers"
                raise ConfigError(
                    key,
                    f"the {self.schedule_kind} schedule for {self.rounds} rounds reaches layer l = {deepest}, which "
                    f"needs L_k > {deepest}, but L_k = {depth}; raise local_layers (<= {global_layers}) or lower "
                    f"federation.rounds",
                )

    def depth_of(self, tier: Tier) -> int:
        """``L_k`` of a client of ``tier``: the tier's ``local_layers``, else the option's."""
        return tier.local_layers or self.local_layers

    def layer_schedule(self, rounds: int) -> list[int]:
        """The trained global layer ``l(i)`` of every round."""
        if self.schedule_kind == "first":
            return [0] * rounds
        if self.schedule_kind == "sequential":
            return list(range(rounds))
        return progressive_schedule(rounds)

    def deep_layers(self, layer: int, round_idx: int, client_id: int, depth: int) -> list[int]:
        """Global layers at local positions ``layer+1..depth-1``."""
        count = depth - layer - 1
        if not self.sampling:
            return list(range(layer + 1, layer + 1 + count))
        generator = self.generator(SAMPLING, round_idx, client_id)
        return sample_deep_layers(generator, layer + 1, self.arch.num_layers, count)

    def plan(self, round_idx: int, client_id: int, tier: Tier = FULL) -> ClientPlan:
        layer = self.schedule[round_idx]
        depth = max(self.depth_of(tier), layer + 1)  # a local model holds layers 0..l (a shrunk L_k cannot cut them)
        stale: frozenset[int] = frozenset()
        if self.refresh_deep:
            deep = self.deep_layers(layer, round_idx, client_id, depth)
        else:  # keep the deep layers sampled in round 0 at the positions they had then
            first = [0, *self.deep_layers(self.schedule[0], 0, client_id, depth)]
            deep = first[layer + 1 :]
            stale = frozenset(range(layer + 1, depth)) if round_idx > 0 else frozenset()
        layer_map = (*range(layer + 1), *deep)
        if self.train_all:
            trainable = ClientPlan(layer_map, frozenset()).download_names(self.arch)
        else:
            trainable = self.arch.layer_params(layer) + self.arch.head_params()
        return ClientPlan(layer_map=layer_map, trainable=frozenset(trainable), stale_positions=stale)


@register
class FedBT(FedBTPretrain):
    name = "fedbt"
    description = "FedBT pre-training: progressive layer schedule, deep sampling mapping, upload one layer + head"


@register
class FedBTAll(FedBTPretrain):
    name = "fedbt-all"
    description = "FedBT ablation: same local model, every local tensor trained and uploaded"
    train_all = True


@register
class FedBTNoPL(FedBTPretrain):
    name = "fedbt-no-pl"
    description = "FedBT ablation \\PL: no progressive schedule, every round trains layer 0"
    schedule_kind = "first"


@register
class FedBTNoS(FedBTPretrain):
    name = "fedbt-no-s"
    description = "FedBT ablation \\S: no sampling, deep positions hold consecutive layers (interpretation)"
    sampling = False


@register
class FedBTNoM(FedBTPretrain):
    name = "fedbt-no-m"
    description = "FedBT ablation \\M: deep layers sampled once in round 0 and never refreshed (interpretation)"
    refresh_deep = False
    uses_stale_layers = True


@register
class FedBTNoSP(FedBTPretrain):
    name = "fedbt-no-sp"
    description = "FedBT ablation \\SP: sequential schedule l(i) = i (interpretation)"
    schedule_kind = "sequential"
