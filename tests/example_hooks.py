"""Worked example of the method hooks (docs/adding-a-baseline.md): FedDyn (Acar et al., ICLR 2021).

Client k keeps a correction g_k of its own (zero at first) and, in round t, minimises with plain SGD
    L_k(w) - <g_k, w> + alpha/2 ||w - w_t||^2
over the tensors it trains; afterwards g_k <- g_k - alpha (w_k - w_t). The server keeps h (zero at first):
h <- h - alpha / m sum_{k in P_t} (w_k - w_t), m the number of clients and P_t the round's participants, and
w_{t+1} = mean_k w_k - h / alpha. ``aggregate`` takes the round (its third argument) to learn m and P_t.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from baselines.fedavg import FedAvg
from fedbt.federated.method import LocalContext, RoundInfo, register


@register
class FedDyn(FedAvg):
    name = "example-feddyn"
    description = "Example of the hooks: FedDyn (client correction state, SGD, server state h; option alpha)"
    scenarios = ("pretrain", "finetune")

    @dataclass
    class Options:
        alpha: float = 0.01

    def __init__(self, *args, **kwargs):
        self.h: dict[str, torch.Tensor] = {}  # the server's state
        super().__init__(*args, **kwargs)

    def local_optimizer(self, model, local):  # client side: plain SGD instead of AdamW
        return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=local.lr)

    def local_loss(self, client: LocalContext) -> torch.Tensor:  # client side: added at every step
        alpha, terms = self.options.alpha, []
        for name, param in client.trained:
            term = alpha / 2 * ((param - client.start[name]) ** 2).sum()
            if name in client.state:
                term = term - (client.state[name] * param).sum()
            terms.append(term)
        return sum(terms)

    def client_state(self, client: LocalContext) -> dict[str, torch.Tensor]:  # client side: kept for next round
        alpha = self.options.alpha
        return {
            name: client.state.get(name, 0) - alpha * (param.detach() - client.start[name])
            for name, param in client.trained
        }

    def aggregate(self, global_params, averaged, round: RoundInfo):  # server side: h, then the corrected mean
        alpha, share, new = self.options.alpha, len(round.participants) / round.num_clients, {}
        for name, mean in averaged.items():
            current = global_params[name].detach().to(mean.device, mean.dtype)
            self.h[name] = self.h.get(name, torch.zeros_like(mean)) - alpha * share * (mean - current)
            new[name] = mean - self.h[name] / alpha
        return new

    def state_tensors(self) -> dict[str, torch.Tensor]:  # saved with every checkpoint
        return dict(self.h)

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.h = dict(tensors)
