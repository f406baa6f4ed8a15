"""The Flower run config of the fedbt App: which fedbt run config to run, with which overrides.

Keys (``[tool.flwr.app.config]`` in ``fedbt/flower/app/pyproject.toml``, overridden with
``flwr run ... --run-config 'key=value ...'``):

=================  =======================================================================================
``config``         path of a fedbt run config (YAML), as for ``fedbt run``
``set``            ``fedbt run --set`` overrides separated by ``;``, e.g. ``"federation.rounds=3;seed=1"``
``out``            the run directory (empty: the config's ``out_dir`` or ``results/runs/<study>/<name>``)
``fresh``          discard an earlier checkpoint in the run directory
``wire``           measure the bytes of every message (``wire`` in the run's metrics)
``wait-nodes``     seconds the ServerApp waits for the SuperNodes of every partition to connect
``round-deadline`` seconds a round waits for its clients' updates (0: the run config's
                   ``federation.deadline_s``, none when unset); a client that has not replied by then is
                   dropped for the round (ledger status ``missed-deadline``)
=================  =======================================================================================

The ServerApp and every ClientApp read the same keys, so both build their run from the same config; relative
paths are resolved against each process's working directory (start SuperLink and SuperNodes from the
repository root, or pass absolute paths).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedbt.config import RunConfig, load_config
from fedbt.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "config": "config/runs/smoke.yaml",
    "set": "",
    "out": "",
    "fresh": False,
    "wire": True,
    "wait-nodes": 120,
    "round-deadline": 0,
}


@dataclass(frozen=True)
class RunSettings:
    """A parsed Flower run config."""

    config: str
    overrides: tuple[str, ...]
    out: str
    fresh: bool
    wire: bool
    wait_nodes: float
    round_deadline: float = 0.0
    """Seconds a round waits for updates; 0: ``federation.deadline_s`` of the run config, or until every client
    replied when that is unset (a deadline makes a run's result depend on timing, so the default keeps runs
    reproducible)."""

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunSettings:
        unknown = sorted(set(run_config) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"run-config.{unknown[0]}", f"unknown key; allowed keys: {', '.join(DEFAULTS)}")
        values = {**DEFAULTS, **run_config}
        overrides = tuple(item.strip() for item in str(values["set"]).split(";") if item.strip())
        return cls(
            config=str(values["config"]),
            overrides=overrides,
            out=str(values["out"]),
            fresh=bool(values["fresh"]),
            wire=bool(values["wire"]),
            wait_nodes=float(values["wait-nodes"]),
            round_deadline=_non_negative(values["round-deadline"], "round-deadline"),
        )

    def deadline(self, config: RunConfig) -> float:
        """Seconds a round waits for real replies: ``round-deadline``, else ``federation.deadline_s`` (0: none)."""
        return self.round_deadline or (config.federation.deadline_s or 0.0)

    def load(self) -> RunConfig:
        """The fedbt run config with the overrides (and the run directory) applied."""
        overrides = list(self.overrides) + ([f"out_dir={self.out}"] if self.out else [])
        return load_config(self.config, overrides)

    def as_run_config(self) -> dict[str, Any]:
        """The Flower run config that parses back to these settings."""
        return {
            "config": self.config,
            "set": ";".join(self.overrides),
            "out": self.out,
            "fresh": self.fresh,
            "wire": self.wire,
            "wait-nodes": self.wait_nodes,
            "round-deadline": self.round_deadline,
        }


def _non_negative(value: Any, key: str) -> float:
    """``value`` as seconds >= 0, or a :class:`ConfigError` naming the run-config key."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds >= 0:
        raise ConfigError(f"run-config.{key}", f"must be a number of seconds >= 0 (0: none), got {value!r}")
    return seconds
