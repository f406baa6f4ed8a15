"""FedYogi (Reddi et al., "Adaptive Federated Optimization", ICLR 2021): Yogi on the server's pseudo-gradient.

Rule: as ``fedadam`` (same ``m``, same step ``x_{t+1} = x_t + server_lr * m_t / (sqrt(v_t) + tau)``, ``v_{-1} =
tau^2``, no bias correction), with Yogi's additive second moment

    v_t = v_{t-1} - (1 - beta2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2)

so ``v`` moves towards ``Delta_t^2`` by at most ``(1 - beta2) * Delta_t^2`` per round instead of decaying
multiplicatively.
"""

import torch

from baselines.fedadam import FedAdam
from fedbt.federated.method import register


@register
class FedYogi(FedAdam):
    name = "fedyogi"
    description = "FedYogi: FedAvg clients, Yogi on the server's pseudo-gradient (options server_lr, beta1, beta2, tau)"

    def second_moment(self, v: torch.Tensor, delta_squared: torch.Tensor) -> torch.Tensor:
        """Yogi's ``v_t = v_{t-1} - (1 - beta2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2)``."""
        return v - (1 - self.options.beta2) * delta_squared * torch.sign(v - delta_squared)
