"""Server optimizers on the pseudo-gradient: a server-side option any method composes with (``server.optimizer``).

After ``method.aggregate`` has turned a round's uploads into new values ``y`` of some global tensors ``x`` (for
FedAvg the ``n_k``-weighted mean of the clients' tensors), the simulator hands both to the run's server optimizer:
the pseudo-gradient is ``Delta = y - x``, for exactly the tensors ``aggregate`` returned, and the new global tensor
is ``x + update(Delta)``, element-wise, with the optimizer's state kept per tensor:

* ``fedavgm`` (FedAvg with server momentum, Hsu et al. 2019; Flower's ``FedAvgM``): ``m_t = momentum * m_{t-1} +
  Delta_t``, ``x_{t+1} = x_t + lr * m_t``, ``m_{-1} = 0``; defaults ``lr = 1``, ``momentum = 0.9`` (``lr = 1`` with
  ``momentum = 0`` is the method's own step);
* ``fedadam`` (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2): ``m_t = beta1 * m_{t-1} +
  (1 - beta1) * Delta_t``, ``v_t = beta2 * v_{t-1} + (1 - beta2) * Delta_t^2``, ``x_{t+1} = x_t + lr * m_t /
  (sqrt(v_t) + tau)``, ``m_{-1} = 0``, ``v_{-1} = tau^2``, no bias correction (as in the paper); defaults ``lr =
  1e-2``, ``beta1 = 0.9``, ``beta2 = 0.99`` (the paper's), ``tau = 1e-3`` (from the ranges the paper tunes over);
* ``fedyogi``: ``fedadam`` with Yogi's additive second moment ``v_t = v_{t-1} - (1 - beta2) * Delta_t^2 *
  sign(v_{t-1} - Delta_t^2)``.

This is how Flower composes FedAvgM / FedAdam / FedYogi over FedAvg's aggregation, here over any method's, in the
simulator's round loop (so also under the Flower ServerApp, which runs that loop). The state (keys
``<slot>/<tensor>``, slots ``m`` and ``v``) is saved with every checkpoint. The methods ``fedadam`` and ``fedyogi``
are ``fedavg`` with the optimizer of that name (:meth:`fedbt.federated.method.Method.server_optimizer`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from fedbt.errors import ConfigError

if TYPE_CHECKING:
    from fedbt.config import ServerOptimizerConfig
    from fedbt.federated.method import Method


@dataclass
class ServerOptimizer:
    """Base class: a subclass names itself, declares its settings as dataclass fields and implements :meth:`update`."""

    name: ClassVar[str]

    def __post_init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}

    def step(
        self, current: Mapping[str, torch.Tensor], proposed: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The new global tensors: ``x + update(y - x)`` for every tensor ``y`` of ``proposed`` (``x`` its value in
        ``current``)."""
        new = {}
        for name, value in proposed.items():
            x = current[name].detach().to(value.device, value.dtype)
            new[name] = x + self.update(name, value - x)
        return new

    def update(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        """The step of tensor ``name`` for pseudo-gradient ``delta``; updates the tensor's state."""
        raise NotImplementedError

    def slot(self, slot: str, name: str, like: torch.Tensor, start: float) -> torch.Tensor:
        """The state ``slot`` of tensor ``name`` (``start`` everywhere before its first step)."""
        value = self.state.get(f"{slot}/{name}")
        return torch.full_like(like, start) if value is None else value.to(like.device, like.dtype)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The state to checkpoint, keys ``<slot>/<tensor>``."""
        return dict(self.state)

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned, when a run resumes."""
        self.state = dict(tensors)

    def settings(self) -> dict[str, Any]:
        """The name and settings (for the run's plan digests)."""
        return {"name": self.name, **dataclasses.asdict(self)}


@dataclass
class FedAvgM(ServerOptimizer):
    """Server momentum: ``m = momentum * m + Delta``, step ``lr * m``."""

    name: ClassVar[str] = "fedavgm"
    lr: float = 1.0
    momentum: float = 0.9

    def update(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        m = self.momentum * self.slot("m", name, delta, 0.0) + delta
        self.state[f"m/{name}"] = m
        return self.lr * m


@dataclass
class FedAdam(ServerOptimizer):
    """Adam on the pseudo-gradient without bias correction, ``v`` from ``tau^2``: step ``lr * m / (sqrt(v) + tau)``."""

    name: ClassVar[str] = "fedadam"
    lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def second_moment(self, v: torch.Tensor, delta_squared: torch.Tensor) -> torch.Tensor:
        """Adam's ``v_t = beta2 * v_{t-1} + (1 - beta2) * Delta_t^2``."""
        return self.beta2 * v + (1 - self.beta2) * delta_squared

    def update(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        m = self.beta1 * self.slot("m", name, delta, 0.0) + (1 - self.beta1) * delta
        v = self.second_moment(self.slot("v", name, delta, self.tau**2), delta * delta)
        self.state[f"m/{name}"], self.state[f"v/{name}"] = m, v
        return self.lr * m / (v.sqrt() + self.tau)


@dataclass
class FedYogi(FedAdam):
    """FedAdam with Yogi's second moment."""

    name: ClassVar[str] = "fedyogi"

    def second_moment(self, v: torch.Tensor, delta_squared: torch.Tensor) -> torch.Tensor:
        """Yogi's ``v_t = v_{t-1} - (1 - beta2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2)``."""
        return v - (1 - self.beta2) * delta_squared * torch.sign(v - delta_squared)


OPTIMIZERS: dict[str, type[ServerOptimizer]] = {cls.name: cls for cls in (FedAvgM, FedAdam, FedYogi)}
"""The server optimizers by ``server.optimizer.name`` (besides ``none``)."""


def settings_of(name: str) -> list[str]:
    """The settings the optimizer ``name`` takes (none for ``none``)."""
    return [f.name for f in dataclasses.fields(OPTIMIZERS[name])] if name in OPTIMIZERS else []


def check_setting(setting: str, value: float, key: str) -> None:
    """Raise a :class:`ConfigError` naming ``key`` unless ``value`` suits ``setting``: ``lr`` and ``tau`` > 0,
    ``momentum``, ``beta1`` and ``beta2`` in [0, 1)."""
    if setting in ("lr", "tau"):
        if not value > 0:
            raise ConfigError(key, f"got {value}, must be > 0")
    elif not 0.0 <= value < 1.0:
        raise ConfigError(key, f"got {value}, must be in [0, 1)")


def from_config(config: ServerOptimizerConfig) -> ServerOptimizer | None:
    """The optimizer ``server.optimizer`` configures (its unset settings at the optimizer's defaults), or None."""
    if config.name == "none":
        return None
    settings = {s: getattr(config, s) for s in settings_of(config.name) if getattr(config, s) is not None}
    return OPTIMIZERS[config.name](**settings)


def server_optimizer_for(method: Method, config: ServerOptimizerConfig | None) -> ServerOptimizer | None:
    """The run's server optimizer: the configured one, or the method's own (``fedadam``, ``fedyogi``); a method with
    its own refuses a second one."""
    own, configured = method.server_optimizer(), from_config(config) if config is not None else None
    if own is not None and configured is not None:
        raise ConfigError(
            "server.optimizer.name",
            f"method {method.name} already runs the {own.name} server optimizer (set by its method.options); use "
            f"method.name=fedavg with server.optimizer.name={configured.name}, or server.optimizer.name=none",
        )
    return own or configured
