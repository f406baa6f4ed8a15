"""FedYogi (Reddi et al., "Adaptive Federated Optimization", ICLR 2021): ``fedavg`` with the ``fedyogi`` server
optimizer.

As ``fedadam`` (same options, same step ``x_{t+1} = x_t + server_lr * m_t / (sqrt(v_t) + tau)``, ``v_{-1} =
tau^2``, no bias correction) with Yogi's additive second moment ``v_t = v_{t-1} - (1 - beta2) * Delta_t^2 *
sign(v_{t-1} - Delta_t^2)`` (:class:`fedbt.federated.server_optimizer.FedYogi`), so ``v`` moves towards
``Delta_t^2`` by at most ``(1 - beta2) * Delta_t^2`` per round instead of decaying multiplicatively. Exactly
``fedavg`` with ``server.optimizer: {name: fedyogi, ...}``.
"""

from baselines.fedadam import FedAdam
from fedbt.federated.method import register


@register
class FedYogi(FedAdam):
    name = "fedyogi"
    description = "FedAvg + server optimizer fedyogi (Reddi et al. 2021; options server_lr, beta1, beta2, tau)"
    optimizer = "fedyogi"
