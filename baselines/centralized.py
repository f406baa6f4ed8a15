"""Centralised training ("BERT-C"): the clients' data pooled and trained in one place; an upper reference.

The partition is pooled into a single client that trains the whole model every round. With ``local.epochs``
that is one pass over all the data per round; with a fixed ``local.steps`` the simulator scales the steps by
the number of clients pooled, so the total data and steps equal those of the federated runs. Nothing travels
(``transmits = False``): the ledger records no bytes.
"""

from collections.abc import Sequence

from baselines.fedavg import FedAvg
from fedbt.federated.method import register


@register
class Centralized(FedAvg):
    name = "centralized"
    description = "Centralised reference (BERT-C): all data pooled in one trainer, same data and steps, nothing sent"
    scenarios = ("pretrain", "finetune")
    transmits = False

    def arrange_clients(self, clients: Sequence[Sequence[dict]]) -> list[Sequence[dict]]:
        return [[example for client in clients for example in client]]
