"""Run the suite's methods on Flower (https://flower.ai): the same plans over a real federated runtime.

The adapter is small because the maths stays in the suite: the ServerApp (:mod:`fedbt.flower.server_app`) runs
:func:`fedbt.run.execute` with a :class:`~fedbt.flower.server_app.FlowerClients` runtime, so the method plans,
encodes, aggregates and checkpoints exactly as in ``fedbt run``; each round it sends every selected client
its :class:`~fedbt.federated.simulator.ClientTask` (plan + the encoded tensors it downloads) as a Flower
``Message``. The ClientApp (:mod:`fedbt.flower.client_app`) builds the same federation from the same config,
trains the task with the suite's :class:`~fedbt.federated.simulator.LocalTrainer` and replies with the
:class:`~fedbt.federated.simulator.ClientUpdate` (encoded trained tensors + ledger row).
:mod:`fedbt.flower.codec` turns those dataclasses into Flower records and counts the bytes of every message;
:mod:`fedbt.flower.local` starts and stops a SuperLink and SuperNodes on 127.0.0.1.

Needs the optional extra: ``pip install -e '.[flower]'`` (``flwr[simulation]``, pinned in pyproject.toml).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fedbt.errors import FedBTError

APP_DIR = Path(__file__).parent / "app"
"""The Flower App (its ``pyproject.toml`` names the ServerApp and ClientApp): ``flwr run fedbt/flower/app ...``."""


def require_flwr() -> None:
    """Fail with the install command when the optional ``flwr`` extra is missing."""
    if importlib.util.find_spec("flwr") is None:
        raise FedBTError("the Flower runtime needs the optional extra: pip install -e '.[flower]'")
