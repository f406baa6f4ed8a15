"""FedAdam (Reddi et al., "Adaptive Federated Optimization", ICLR 2021): ``fedavg`` with the ``fedadam`` server
optimizer.

A thin alias kept for its registered name: clients train as in FedAvg, and the simulator runs
:class:`fedbt.federated.server_optimizer.FedAdam` (Algorithm 2: Adam on the pseudo-gradient, ``v`` from ``tau^2``,
no bias correction; the rule is there) with this method's options ``server_lr``, ``beta1``, ``beta2``, ``tau``.
It is exactly ``method.name: fedavg`` with ``server.optimizer: {name: fedadam, lr: <server_lr>, beta1, beta2,
tau}``, the same code and the same checkpointed moments; ``server.optimizer`` composes that optimizer with any other
method (e.g. ``fedbt``) and must stay ``none`` with this one (one server optimizer per run). Defaults: ``beta1 =
0.9``, ``beta2 = 0.99`` (the paper's), ``tau = 1e-3`` and ``server_lr = 1e-2`` (from the ranges the paper tunes
over; tune them for your task). ``fedyogi`` changes only the optimizer.
"""

from dataclasses import dataclass
from typing import ClassVar

from baselines.fedavg import FedAvg
from fedbt.federated.method import register
from fedbt.federated.server_optimizer import OPTIMIZERS, ServerOptimizer, check_setting


@register
class FedAdam(FedAvg):
    name = "fedadam"
    description = "FedAvg + server optimizer fedadam (Reddi et al. 2021; options server_lr, beta1, beta2, tau)"
    scenarios = ("pretrain", "finetune")
    optimizer: ClassVar[str] = "fedadam"
    """The server optimizer's name (:data:`~fedbt.federated.server_optimizer.OPTIMIZERS`)."""

    @dataclass
    class Options:
        server_lr: float = 1e-2
        beta1: float = 0.9
        beta2: float = 0.99
        tau: float = 1e-3

    def validate(self) -> None:
        options = self.options
        for setting, key in (("lr", "server_lr"), ("beta1", "beta1"), ("beta2", "beta2"), ("tau", "tau")):
            check_setting(setting, getattr(options, key), f"method.options.{key}")

    def server_optimizer(self) -> ServerOptimizer:
        options = self.options
        return OPTIMIZERS[self.optimizer](
            lr=options.server_lr, beta1=options.beta1, beta2=options.beta2, tau=options.tau
        )
