"""FedAvg of LoRA adapters (via ``peft``): only the adapters (and the head's own tensors) travel.

:meth:`prepare_model` injects LoRA adapters into the ``target_modules`` of every model with
``peft.inject_adapter_in_model``, which keeps the model's class and the base model's parameter prefix
(``bert.encoder.layer.3.attention.self.query.lora_A.default.weight``; the wrapped base weight becomes
``....query.base_layer.weight``), so layer surgery and cost tables work unchanged. Clients train and upload
the ``lora_A`` / ``lora_B`` tensors and, with ``train_head`` (default), the output head's own tensors: the MLM
transform + output bias (MiniLM ships without an MLM head, so it must be learnt) or the task head (pooler +
classifier, new in fine-tuning). Everything else is frozen. Downloads count every tensor of the local model,
base weights included, as for every method of the suite (a client caching the frozen base would only need the
adapters). :meth:`deploy` merges the adapters into the base weights of a copy and returns a plain transformers
model with the original parameter names, which ``save_pretrained`` and downstream evaluation load as usual.

The analytic FLOPs (:func:`fedbt.costs.analytic_train_flops`) charge the frozen base weights their forward pass
and, above the lowest adapter, their input gradients (no weight gradients), and the adapters their own forward
and backward passes; they equal the measured FLOPs (tests/test_flop_parity.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from fedbt.errors import ConfigError
from fedbt.federated.method import ClientPlan, Method, register

ADAPTER_TAG = ".lora_"


def default_targets(model: nn.Module) -> list[str]:
    """The attention query and value projections: ``query``/``value`` (BERT) or ``q_proj``/``v_proj`` (ViT)."""
    leaves = {name.rpartition(".")[2] for name, _ in model.named_modules()}
    return ["q_proj", "v_proj"] if {"q_proj", "v_proj"} <= leaves else ["query", "value"]


@register
class LoRA(Method):
    name = "lora"
    description = "FedAvg of LoRA adapters (peft; options rank, alpha, target_modules): adapters + head travel"
    scenarios = ("pretrain", "finetune")

    @dataclass
    class Options:
        rank: int = 8
        alpha: float = 16.0
        dropout: float = 0.0
        target_modules: list[str] | None = None
        """Module names to adapt; default: the attention query and value projections of the model
        (``query``/``value`` in BERT, ``q_proj``/``v_proj`` in ViT)."""
        train_head: bool = True

    def validate(self) -> None:
        options = self.options
        if options.rank < 1:
            raise ConfigError("method.options.rank", f"got {options.rank}, must be >= 1")
        if options.alpha <= 0:
            raise ConfigError("method.options.alpha", f"got {options.alpha}, must be > 0")
        if not 0.0 <= options.dropout < 1.0:
            raise ConfigError("method.options.dropout", f"got {options.dropout}, must be in [0, 1)")
        if options.target_modules is not None and not options.target_modules:
            raise ConfigError("method.options.target_modules", "must name at least one module, e.g. [query, value]")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(
            r=self.options.rank,
            lora_alpha=self.options.alpha,
            lora_dropout=self.options.dropout,
            target_modules=list(self.options.target_modules or default_targets(model)),
        )
        try:
            return inject_adapter_in_model(config, model)
        except ValueError as error:  # no module matches target_modules
            raise ConfigError("method.options.target_modules", str(error).splitlines()[0]) from error

    def plan(self, round_idx: int, client_id: int) -> ClientPlan:
        trainable = [n for n in self.arch.names if ADAPTER_TAG in n]
        if self.options.train_head:
            trainable += self.arch.head_params()
        return ClientPlan(layer_map=tuple(range(self.arch.num_layers)), trainable=frozenset(trainable))

    def deploy(self, global_model: nn.Module) -> nn.Module:
        """A copy of the global model with the adapters merged into their base layers and removed."""
        from peft.tuners.lora import LoraLayer

        merged = copy.deepcopy(global_model)
        for name, module in list(merged.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent, _, child = name.rpartition(".")
                setattr(merged.get_submodule(parent), child, module.get_base_layer())
        return merged
