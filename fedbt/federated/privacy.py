"""Client-level differential privacy for any method: clip each participant's update, add Gaussian noise to the sum.

DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018), for whatever a
method uploads. A participant's **update** is its uploaded tensors minus the values it received for them (by
global name; a width slice minus the slice it received), taken as one flat vector over every uploaded tensor. The
client clips it to L2 norm ``C`` (``privacy.clip``) before the method encodes the upload. The noise, Gaussian of
std ``sigma C`` (``privacy.noise_multiplier``) per element of the round's **sum** of uploads, is added

* ``central`` (a trusted server): by the server, to the sums of the streaming average
  (:meth:`fedbt.federated.aggregate.WeightedAverage.add_noise`) after every upload is in; for a method with its
  own encoding (``Method.encode``) the server first clips each decoded update again (a no-op unless the encoding
  changed it), so the bound holds for any encoding;
* ``distributed``: by each of the round's ``m`` participants to its own clipped update, std ``sigma C / sqrt(m)``,
  so that the sum carries std ``sigma C``. What the ``epsilon`` states then holds for the sum (the server should
  see only that: secure aggregation, which this suite does not simulate); each single upload carries
  ``1 / sqrt(m)`` of the noise, and a participant that fails after the server sent its task takes its share away.

Why uniform weights: replacing one client's data changes the sum of clipped updates by at most ``2C`` whatever the
method, so Gaussian noise of std ``sigma C`` makes the sum a Gaussian mechanism of noise multiplier ``sigma / 2``
with respect to that (replace-one) sensitivity, which is what :mod:`fedbt.privacy_accounting` accounts. ``n_k``
weights would let one client's share grow with its data, so ``privacy`` needs ``federation.aggregation:
uniform`` (:func:`fedbt.config.check_privacy`); each tensor (each element of a width-sliced one) is then the
noisy sum divided by the number of participants that uploaded it: a count the plans and the client sample fix,
not the data. Everything after the average (``Method.aggregate``, the server optimizer, the next round's
download) is post-processing of the noisy sum and costs no privacy.

Refused before training (:func:`check_method`), naming the key: methods that train in one place
(``transmits = False``); methods that upload extras beside their tensors (``upload_extra``: SCAFFOLD's control
variates would leave the client unclipped and un-noised); methods that hold parts of the uploads back from the
average (``receive_upload``: InclusiveFL's per-depth groups would average them without the noise); and
``distributed`` noise with width-sliced plans (HeteroFL: an element held by fewer than ``m`` participants would
get less than ``sigma C`` of noise). What is recorded per round (``dp_*`` keys, the pre-clip norms the clients
report) is the experimenter's diagnostic, as the ledger's per-client losses are: only the global models are
covered by epsilon. The noise is seeded by (run seed, round, client), so a rerun, a resumed run and the same run
over Flower draw the same noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch

from fedbt.errors import ConfigError
from fedbt.federated.aggregate import WeightedAverage
from fedbt.federated.method import Method
from fedbt.seeding import derive_seed

if TYPE_CHECKING:
    from fedbt.config import PrivacyConfig

NOISE = 217
"""Tag of the noise streams among the run's derived seeds (:func:`fedbt.seeding.derive_seed`)."""
SERVER = -1
"""The client key of the server's own noise stream."""


def l2_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm of the tensors taken as one flat vector."""
    return math.sqrt(
        sum(float(torch.linalg.vector_norm(t.detach(), dtype=torch.float64)) ** 2 for t in tensors.values())
    )


def update_of(upload: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each uploaded tensor minus the value the client received for it (float32, CPU)."""
    return {n: _float32(t) - _float32(received[n]) for n, t in upload.items()}


def _float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", torch.float32)


def clip(update: Mapping[str, torch.Tensor], bound: float) -> tuple[dict[str, torch.Tensor], float]:
    """``update`` scaled to L2 norm at most ``bound`` (as one vector), and its norm before clipping. A longer update
    is scaled to ``bound * (1 - 2^-20)``, so that float32 rounding (at most 2^-24 of each element) cannot exceed
    ``bound``."""
    norm = l2_norm(update)
    scale = min(1.0, bound * (1 - 2**-20) / norm) if norm > 0 else 1.0
    return {n: t * scale for n, t in update.items()}, norm


def gaussian(shapes: Mapping[str, tuple[int, ...]], std: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Independent N(0, std^2) noise (float32) of each shape, drawn in sorted name order."""
    return {n: torch.randn(shapes[n], generator=generator) * std for n in sorted(shapes)}


def noise_generator(seed: int, round_idx: int, client_id: int) -> torch.Generator:
    """The noise stream of one client (or of the server, :data:`SERVER`) in one round."""
    return torch.Generator().manual_seed(derive_seed(seed, NOISE, round_idx, client_id))


def privatize(
    upload: Mapping[str, torch.Tensor],
    received: Mapping[str, torch.Tensor],
    privacy: PrivacyConfig,
    seed: int,
    round_idx: int,
    client_id: int,
    participants: int,
) -> tuple[dict[str, torch.Tensor], float]:
    """Client side: the upload with its update clipped to ``privacy.clip`` (and, ``distributed``, this client's
    share of the noise added), in the upload's dtypes, and the update's norm before clipping."""
    update, norm = clip(update_of(upload, received), privacy.clip)  # float32, the norm summed in float64
    if privacy.noise == "distributed" and privacy.noise_multiplier > 0:
        std = privacy.noise_multiplier * privacy.clip / math.sqrt(max(participants, 1))
        shapes = {n: tuple(t.shape) for n, t in update.items()}
        noise = gaussian(shapes, std, noise_generator(seed, round_idx, client_id))
        update = {n: t + noise[n] for n, t in update.items()}
    return _apply(update, received, upload), norm


def server_clip(
    upload: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor], privacy: PrivacyConfig
) -> dict[str, torch.Tensor]:
    """Server side, ``central`` noise: the decoded upload with its update clipped again (unchanged when the client's
    clipped update arrived as it was sent, up to rounding)."""
    update = update_of(upload, received)
    if l2_norm(update) <= privacy.clip * (1 + 1e-5):
        return dict(upload)
    return _apply(clip(update, privacy.clip)[0], received, upload)


def _apply(
    update: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor], like: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``received + update`` per tensor, in the dtype and device of ``like``'s tensor of that name."""
    return {n: (_float32(received[n]) + u).to(like[n].device, like[n].dtype) for n, u in update.items()}


def central_std(privacy: PrivacyConfig) -> float:
    """The std the server adds to each element of the round's sums (0 for ``distributed`` noise)."""
    return privacy.noise_multiplier * privacy.clip if privacy.noise == "central" else 0.0


def round_report(privacy: PrivacyConfig, norms: Mapping[int, float], dims: Mapping[int, int]) -> dict[str, float]:
    """The round's DP diagnostics: the clip, the share of uploads it shortened, their mean norm before clipping,
    the mean update dimension ``d`` and the expected L2 norm ``sigma C sqrt(d) / m`` of the noise in the mean
    update of the round's ``m`` uploads (every upload of dimension ``d``)."""
    if not norms:
        return {"dp_clip": privacy.clip}
    dim = sum(dims.values()) / len(dims)
    return {
        "dp_clip": privacy.clip,
        "dp_clipped_fraction": sum(norm > privacy.clip for norm in norms.values()) / len(norms),
        "dp_update_norm": sum(norms.values()) / len(norms),
        "dp_update_dim": dim,
        "dp_noise_norm": privacy.noise_multiplier * privacy.clip * math.sqrt(dim) / len(norms),
    }


def check_method(method: Method, privacy: PrivacyConfig) -> None:
    """Raise :class:`ConfigError` for a method whose uploads client-level DP cannot cover (module docstring)."""
    name = method.name
    if not method.transmits:
        raise ConfigError("privacy", f"{name} trains in one place and uploads nothing: there is no update to clip")
    if type(method).upload_extra is not Method.upload_extra:
        raise ConfigError(
            "privacy",
            f"{name} uploads extras beside its tensors (upload_extra, e.g. SCAFFOLD's control variates) that would "
            "leave the client unclipped and without noise; client-level DP does not support it: drop privacy or "
            "choose another method",
        )
    if type(method).receive_upload is not Method.receive_upload:
        raise ConfigError(
            "privacy",
            f"{name} holds parts of the uploads back from the average (receive_upload, e.g. InclusiveFL's per-depth "
            "groups), where the noise on the sums would not reach them; client-level DP does not support it",
        )
    if privacy.noise == "distributed" and any(method.client_plan(0, 0, tier).slices for tier in method.tiers):
        raise ConfigError(
            "privacy.noise",
            f"{name} uploads width slices: an element held by fewer than all participants would get less than "
            "sigma C of distributed noise; use privacy.noise: central",
        )


class ServerPrivacy:
    """The server's side of a run with ``privacy``: checks each upload, adds the central noise to the round's sums
    and reports the round's epsilon (:mod:`fedbt.privacy_accounting`) and diagnostics."""

    def __init__(
        self, privacy: PrivacyConfig, seed: int, clients: int, fraction: float, rounds: int, encodes: bool = True
    ):
        """``encodes``: whether the method has its own encoding (then the server clips each decoded update again;
        an identity encoding delivers the client's clipped tensors bit for bit)."""
        from fedbt.privacy_accounting import run_epsilons

        self.privacy = privacy
        self.seed = seed
        self.guard = encodes and privacy.noise == "central"
        self.epsilons = run_epsilons(privacy, clients, fraction, rounds)
        self._norms: dict[int, float] = {}
        self._dims: dict[int, int] = {}

    def receive(
        self,
        client_id: int,
        upload: Mapping[str, torch.Tensor],
        received: Callable[[], Mapping[str, torch.Tensor]],
        norm: float | None,
    ) -> dict[str, torch.Tensor]:
        """A client's decoded upload as it enters the average (``central`` noise and a method with its own encoding:
        clipped again against ``received()``, the values it was sent); notes its reported pre-clip norm and its
        dimension."""
        if norm is not None:
            self._norms[client_id] = norm
        self._dims[client_id] = sum(t.numel() for t in upload.values())
        return server_clip(upload, received(), self.privacy) if self.guard else dict(upload)

    def perturb(self, average: WeightedAverage, round_idx: int) -> None:
        """``central``: the round's noise on the sums of the uploads (seeded by run seed and round)."""
        std = central_std(self.privacy)
        if std > 0 and len(average):
            average.add_noise(std, noise_generator(self.seed, round_idx, SERVER))

    def record(self, round_idx: int) -> dict[str, float | None]:
        """The round's ``epsilon`` (spent after it; None without noise: infinite) and ``dp_*`` diagnostics."""
        report: dict[str, float | None] = dict(round_report(self.privacy, self._norms, self._dims))
        spent = self.epsilons[round_idx]
        report["epsilon"] = spent if math.isfinite(spent) else None
        self._norms, self._dims = {}, {}
        return report
