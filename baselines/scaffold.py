"""SCAFFOLD (Karimireddy et al., ICML 2020), Algorithm 1 with option II, on the message channel.

The server holds the global model ``x`` and a control variate ``c``; client ``i`` keeps its own ``c_i`` (zero at
first, :meth:`client_state`, it never travels). In a round each participant receives ``x`` and ``c``
(``download_extra``: ``c`` travels beside the model and counts as download), runs ``K`` steps of plain SGD on the
corrected gradient ``g_i(y) - c_i + c`` (``local_loss`` adds ``<c - c_i, y>``, whose gradient is the correction;
``clip_local_loss = False``: ``local.max_grad_norm`` clips ``g_i`` only, never the correction) and computes
``c_i+ = c_i - c + (x - y) / (K lr)`` (option II). It uploads ``y`` (the trained tensors, as FedAvg) and
``delta_c_i = c_i+ - c_i`` (``upload_extra``: counted as upload), so each direction carries twice the model. The server
averages the ``y`` as the run's ``federation.aggregation`` says (the paper's ``x + eta_g mean(delta_y)`` with
``eta_g = 1``; ``server.optimizer: {name: fedavgm, lr: eta_g, momentum: 0}`` gives another ``eta_g``) and sets
``c <- c + (1/N) sum_i delta_c_i`` over the round's participants, ``N`` the number of clients.

Departures: the paper's SGD has no weight decay or momentum and neither has this one (``local.weight_decay`` is
not used); its learning rate is ``local.lr``, so a study gives SCAFFOLD a grid at SGD's scale (e.g. 0.03-0.3), not
AdamW's. Every client trains the whole model (FedAvg's plans; tiers are ignored, as FedAvg ignores them).
"""

from collections.abc import Mapping

import torch

from baselines.fedavg import FedAvg
from fedbt.config import LocalConfig
from fedbt.federated.method import ClientPlan, LocalContext, RoundInfo, register
from fedbt.memory import plan_numel


def new_client_variate(client: LocalContext) -> dict[str, torch.Tensor]:
    """Option II: ``c_i+ = c_i - c + (x - y) / (K lr)`` per trained tensor."""
    scale = 1.0 / (client.steps * client.lr)
    variates = {}
    for name, param in client.trained:
        c, c_i = client.received_extra[name], client.state.get(name, torch.zeros_like(param))
        variates[name] = c_i - c + (client.start[name] - param.detach()) * scale
    return variates


@register
class Scaffold(FedAvg):
    name = "scaffold"
    description = (
        "SCAFFOLD (option II): FedAvg with plain SGD on gradients corrected by control variates; the server variate "
        "goes down and each client's change goes up beside the model (twice FedAvg's bytes each way)"
    )
    scenarios = ("pretrain", "finetune")
    clip_local_loss = False

    def __init__(self, *args, **kwargs):
        self.c: dict[str, torch.Tensor] = {}  # the server control variate, by global name
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------------------------- server side

    def server_variate(self, name: str) -> torch.Tensor:
        """``c`` for one global tensor (zeros until a client's change arrives)."""
        if name not in self.c:
            self.c[name] = torch.zeros(self.arch.param_shapes[name])
        return self.c[name]

    def download_extra(self, round: RoundInfo, client_id: int, plan: ClientPlan) -> dict[str, torch.Tensor]:
        return {name: self.server_variate(name) for name in sorted(plan.trainable)}

    def aggregate(self, global_params, averaged, round: RoundInfo):
        for changes in round.extras.values():
            for name, change in changes.items():
                self.c[name] = self.server_variate(name) + change / round.num_clients
        return dict(averaged)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.c)

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.c = dict(tensors)

    # ------------------------------------------------------------------------------------- client side

    def local_optimizer(self, model, local: LocalConfig) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=local.lr)

    def local_loss(self, client: LocalContext) -> torch.Tensor:
        terms = []
        for name, param in client.trained:
            correction = client.received_extra[name] - client.state.get(name, 0)
            terms.append((correction * param).sum())
        return sum(terms)

    def upload_extra(self, client: LocalContext) -> dict[str, torch.Tensor]:
        new = new_client_variate(client)
        return {name: c_new - client.state.get(name, 0) for name, c_new in new.items()}

    def client_state(self, client: LocalContext) -> dict[str, torch.Tensor]:
        return new_client_variate(client)

    def extra_client_numel(self, plan: ClientPlan) -> int:
        """The received ``x`` (for option II), ``c`` and the client's ``c_i``, each over the trained tensors."""
        return 3 * plan_numel(self.arch, plan, plan.trainable)
