"""Client devices: what a resource tier's clients run on (``federation.tiers[].device``), dealt to the clients by seed.

A device has a sustained training throughput (``train_gflops``: GFLOP/s of a whole training step at fp32, and
optionally ``train_gflops_bf16`` for runs at ``local.precision: bf16``), a downlink and an uplink bandwidth
(``downlink_mbps`` / ``uplink_mbps``: Mbit/s, 10^6 bits per second), optionally its memory for training
(``memory_mb``, MB = 10^6 bytes: the tier's memory budget when the tier sets none), the probability that a client
is available in a round (``availability``, default 1) and an optional ``spread``: per quantity
(``train_gflops``, ``downlink_mbps``, ``uplink_mbps``) the sigma of a log-normal factor with median 1, drawn once
per client from the run seed, so the clients of one tier differ as devices of one class do (FedScale's
``get_completion_time_lognormal`` models device speed so, with sigma 0.6).

``device`` names a preset (``data/devices/<name>/device.yaml``, each with a ``SOURCE.md`` saying where every
number comes from) or gives one inline: a mapping of the keys above, or ``{preset: <name>, <key>: <value>, ...}``
to change some of a preset's values. An unknown preset or key, a missing value or one out of range fails before
training with a :class:`~fedbt.errors.ConfigError` naming the key and what is allowed.

Availability is drawn per (seed, round, client), independent of the method, so every method of a study sees the
same clients go offline in the same rounds. :mod:`fedbt.timing` turns a device and a client-round's counts into
simulated seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fedbt.errors import ConfigError
from fedbt.seeding import derive_seed

if TYPE_CHECKING:
    from fedbt.config import RunConfig
    from fedbt.timing import Timing

DEVICES, AVAILABILITY = 22, 23  # tags of the spread and availability random streams
SPREAD_KEYS = ("train_gflops", "downlink_mbps", "uplink_mbps")
PRESET_DIR = "devices"
PRESET_FILE = "device.yaml"


@dataclass
class DeviceSpec:
    """A device as written in a config: a preset name to start from and the values to set (all optional here;
    :func:`resolve` checks that the result is complete)."""

    preset: str | None = None
    train_gflops: float | None = None
    train_gflops_bf16: float | None = None
    downlink_mbps: float | None = None
    uplink_mbps: float | None = None
    memory_mb: float | None = None
    availability: float | None = None
    spread: dict[str, float] | None = None


@dataclass(frozen=True)
class Device:
    """A resolved device profile (see the module docstring for each value's unit)."""

    name: str
    train_gflops: float
    downlink_mbps: float
    uplink_mbps: float
    train_gflops_bf16: float | None = None
    memory_mb: float | None = None
    availability: float = 1.0
    spread: tuple[tuple[str, float], ...] = ()

    def flops_per_second(self, dtype: str = "fp32") -> float:
        """Sustained training FLOP/s at ``dtype`` (``fp32`` or ``bf16``)."""
        gflops = self.train_gflops_bf16 if dtype == "bf16" else self.train_gflops
        return gflops * 1e9

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"spread": dict(self.spread)}


def presets(data_dir: str | Path) -> list[str]:
    """The preset names shipped under ``<data_dir>/devices/`` (one folder each)."""
    folder = Path(data_dir) / PRESET_DIR
    return sorted(path.parent.name for path in folder.glob(f"*/{PRESET_FILE}")) if folder.is_dir() else []


@functools.cache
def _preset_values(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError("", f"{path} must hold a mapping of device keys")
    return loaded


def resolve(value: str | Mapping[str, Any], key: str, data_dir: str | Path) -> Device:
    """The device a config gives at ``key``: a preset name, an inline mapping, or a preset with changes."""
    if not isinstance(value, str | Mapping):
        raise ConfigError(key, f"got {value!r}, expected a preset name or a mapping of device keys")
    raw = {"preset": value} if isinstance(value, str) else dict(value)
    from fedbt.config import from_dict

    spec = from_dict(DeviceSpec, raw, key)
    values: dict[str, Any] = {}
    if spec.preset is not None:
        known = presets(data_dir)
        if spec.preset not in known:
            where = f"{key}.preset" if not isinstance(value, str) else key
            raise ConfigError(
                where,
                f"unknown device preset {spec.preset!r}; allowed: {', '.join(known) or 'none'} "
                f"({Path(data_dir) / PRESET_DIR}/<name>/{PRESET_FILE}), or an inline mapping with keys "
                f"{', '.join(f.name for f in dataclasses.fields(DeviceSpec) if f.name != 'preset')}",
            )
        path = Path(data_dir) / PRESET_DIR / spec.preset / PRESET_FILE
        values = dataclasses.asdict(from_dict(DeviceSpec, _preset_values(path), f"{path}"))
    values.update({k: v for k, v in dataclasses.asdict(spec).items() if v is not None})
    return _checked(values, key, spec.preset or "inline")


def _checked(values: dict[str, Any], key: str, name: str) -> Device:
    """A :class:`Device` from merged values, each required one present and every value in range."""
    for required in ("train_gflops", "downlink_mbps", "uplink_mbps"):
        if values.get(required) is None:
            raise ConfigError(f"{key}.{required}", "required (name a preset, or give it inline)")
    for positive in ("train_gflops", "train_gflops_bf16", "downlink_mbps", "uplink_mbps", "memory_mb"):
        if values.get(positive) is not None and not values[positive] > 0:
            raise ConfigError(f"{key}.{positive}", f"got {values[positive]}, must be > 0")
    availability = values.get("availability")
    availability = 1.0 if availability is None else availability
    if not 0.0 < availability <= 1.0:
        raise ConfigError(f"{key}.availability", f"got {availability}, must be in (0, 1] (a probability per round)")
    spread = values.get("spread") or {}
    for quantity, sigma in spread.items():
        if quantity not in SPREAD_KEYS:
            raise ConfigError(f"{key}.spread.{quantity}", f"unknown key; allowed keys here: {', '.join(SPREAD_KEYS)}")
        if not 0.0 <= sigma <= 3.0:
            raise ConfigError(f"{key}.spread.{quantity}", f"got {sigma}, must be in [0, 3] (sigma of a log-normal)")
    return Device(
        name=name,
        train_gflops=float(values["train_gflops"]),
        downlink_mbps=float(values["downlink_mbps"]),
        uplink_mbps=float(values["uplink_mbps"]),
        train_gflops_bf16=values.get("train_gflops_bf16"),
        memory_mb=values.get("memory_mb"),
        availability=float(availability),
        spread=tuple((quantity, float(sigma)) for quantity, sigma in spread.items() if sigma),
    )


def check_dtype(device: Device, precision: str, key: str) -> None:
    """A run at ``local.precision: bf16`` needs the device's bf16 throughput."""
    if precision == "bf16" and device.train_gflops_bf16 is None:
        raise ConfigError(
            f"{key}.train_gflops_bf16",
            f"required: local.precision is bf16 and device {device.name} gives only its fp32 throughput",
        )


def client_device(device: Device, seed: int, client: int) -> Device:
    """The device of one client: ``device`` with each spread quantity times ``exp(sigma * z)``, ``z`` a standard
    normal drawn from (seed, client, quantity): the same client always gets the same device."""
    if not device.spread:
        return device
    scaled = {}
    for quantity, sigma in device.spread:
        z = random.Random(derive_seed(seed, DEVICES, client, SPREAD_KEYS.index(quantity))).gauss(0.0, 1.0)
        scaled[quantity] = getattr(device, quantity) * math.exp(sigma * z)
    return dataclasses.replace(device, **scaled)


def deal_devices(tier_devices: Sequence[Device], seed: int) -> tuple[Device, ...]:
    """Each client's device from its tier's device (``tier_devices[k]``: the device of client ``k``'s tier)."""
    return tuple(client_device(device, seed, client) for client, device in enumerate(tier_devices))


def available(device: Device, seed: int, round_idx: int, client: int) -> bool:
    """Whether the client is available in the round: a uniform draw from (seed, round, client) below its device's
    ``availability`` (always, at 1)."""
    if device.availability >= 1.0:
        return True
    return random.Random(derive_seed(seed, AVAILABILITY, round_idx, client)).random() < device.availability


def tier_devices(config: RunConfig) -> list[Device | None]:
    """The device of each configured tier (None where a tier gives none)."""
    fed, data_dir = config.federation, config.data.data_dir
    return [
        resolve(tier.device, f"federation.tiers[{i}].device", data_dir) if tier.device is not None else None
        for i, tier in enumerate(fed.tiers)
    ]


def check_devices(config: RunConfig) -> None:
    """Every tier's device resolves and suits the run's dtype; once one tier has a device, every tier has one; a
    percentile deadline needs devices, and only one kind of deadline is set."""
    fed = config.federation
    if fed.deadline_s is not None and fed.deadline_percentile is not None:
        raise ConfigError("federation.deadline_percentile", "set federation.deadline_s or this, not both")
    devices = tier_devices(config)
    if any(devices):
        for i, device in enumerate(devices):
            key = f"federation.tiers[{i}].device"
            if device is None:
                raise ConfigError(key, "required: another tier has a device, and every client needs one to be timed")
            check_dtype(device, config.local.precision, key)
    elif fed.deadline_percentile is not None:
        raise ConfigError(
            "federation.deadline_percentile",
            "a percentile of the clients' simulated times needs devices: give every tier one "
            "(federation.tiers[].device)",
        )


def timing_for(config: RunConfig, dealt: Sequence[str]) -> Timing | None:
    """The run's device model (None: its tiers have no devices): each client's device from the tier it was dealt
    (``dealt[k]``: the tier name of client ``k``), with its spread."""
    from fedbt.timing import Timing

    devices = tier_devices(config)
    if not any(devices):
        return None
    tiers = config.federation.tiers
    by_name = {tier.name or f"tier{i}": device for i, (tier, device) in enumerate(zip(tiers, devices, strict=True))}
    fed = config.federation
    return Timing(
        devices=deal_devices([by_name[name] for name in dealt], config.seed),
        seed=config.seed,
        deadline_s=fed.deadline_s,
        deadline_percentile=fed.deadline_percentile,
        dtype="bf16" if config.local.precision == "bf16" else "fp32",
    )
