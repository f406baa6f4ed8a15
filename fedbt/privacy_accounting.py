"""The privacy budget of a run with ``privacy``: epsilon at ``privacy.delta`` after every round, from Google's
``dp-accounting`` (its Renyi-DP accountant).

What is accounted. Each round the simulator samples a fixed-size subset of ``k = max(1, round(fraction * n))`` of
the ``n`` clients without replacement (all of them at ``fraction: 1``) and releases the noisy sum of their clipped
updates (:mod:`fedbt.federated.privacy`). That is ``dp_accounting.SampledWithoutReplacementDpEvent(n, k, Gaussian)``
per round, which the library accounts under the *replace-one* neighbouring relation (Wang, Balle and
Kasiviswanathan, "Subsampled Renyi Differential Privacy and Analytical Moments Accountant", AISTATS 2019;
``n`` is public): two federations are neighbours when one client's data differs. Replacing a client changes the sum
of updates clipped to ``C`` by up to ``2C``, so the noise of std ``sigma C`` is a Gaussian mechanism of noise
multiplier ``sigma / 2`` with respect to that sensitivity: :func:`accounted_noise_multiplier`. The rounds compose
(``count`` = rounds); RDP converts to (epsilon, delta) at the library's default orders.

This is a different (and looser) statement than the add-or-remove epsilon of Poisson sampling often quoted for
DP-FedAvg (e.g. sigma 1, q = 0.1, 5 rounds, delta 1e-3: 9.2 here, 1.7 with Poisson sampling and add-or-remove);
the simulator does not sample clients by Poisson, so that figure would not be this run's.
"""

from __future__ import annotations

import functools
import logging
import math

import dp_accounting
from dp_accounting.rdp import RdpAccountant

from fedbt.config import PrivacyConfig
from fedbt.errors import ConfigError

# dp-accounting logs a warning for every small RDP order whose series does not converge (that order is skipped)
logging.getLogger("absl").setLevel(logging.ERROR)


def sample_size(clients: int, fraction: float) -> int:
    """Clients sampled per round: all, or ``max(1, round(fraction * clients))`` (the simulator's rule)."""
    return clients if fraction >= 1.0 else max(1, round(fraction * clients))


def accounted_noise_multiplier(noise_multiplier: float) -> float:
    """The noise multiplier with respect to the replace-one sensitivity ``2C`` of the sum: ``sigma / 2``."""
    return noise_multiplier / 2


@functools.lru_cache(maxsize=64)
def epsilons(noise_multiplier: float, clients: int, sampled: int, rounds: int, delta: float) -> tuple[float, ...]:
    """Epsilon at ``delta`` after rounds 1..``rounds`` (``inf`` without noise)."""
    if noise_multiplier <= 0:
        return (math.inf,) * rounds
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        clients, sampled, dp_accounting.GaussianDpEvent(accounted_noise_multiplier(noise_multiplier))
    )
    accountant = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    spent = []
    for _ in range(rounds):
        accountant.compose(event)
        spent.append(float(accountant.get_epsilon(delta)))
    return tuple(spent)


def run_epsilons(privacy: PrivacyConfig, clients: int, fraction: float, rounds: int) -> tuple[float, ...]:
    """Epsilon after every round of a run with ``privacy``."""
    return epsilons(privacy.noise_multiplier, clients, sample_size(clients, fraction), rounds, privacy.delta)


def noise_for(target_epsilon: float, clients: int, sampled: int, rounds: int, delta: float) -> float:
    """The smallest noise multiplier (to 3 digits) whose epsilon after ``rounds`` is at most ``target_epsilon``."""

    def event(sigma: float) -> dp_accounting.DpEvent:
        inner = dp_accounting.GaussianDpEvent(accounted_noise_multiplier(sigma))
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.SampledWithoutReplacementDpEvent(clients, sampled, inner), rounds
        )

    return dp_accounting.calibrate_dp_mechanism(
        lambda: RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE),
        event,
        target_epsilon,
        delta,
        dp_accounting.LowerEndpointAndGuess(0.01, 1.0),
        tol=1e-3,
    )


def check_target(privacy: PrivacyConfig, clients: int, fraction: float, rounds: int) -> None:
    """Raise :class:`ConfigError` naming ``privacy.target_epsilon`` when the run would spend more than it."""
    if privacy.target_epsilon is None:
        return
    spent = run_epsilons(privacy, clients, fraction, rounds)[-1]
    if spent <= privacy.target_epsilon:
        return
    needed = noise_for(privacy.target_epsilon, clients, sample_size(clients, fraction), rounds, privacy.delta)
    raise ConfigError(
        "privacy.target_epsilon",
        f"{rounds} rounds sampling {sample_size(clients, fraction)} of {clients} clients at noise_multiplier "
        f"{privacy.noise_multiplier:g} spend epsilon = {spent:.4g} at delta = {privacy.delta:g}, above the target "
        f"{privacy.target_epsilon:g}: raise privacy.noise_multiplier to at least {needed:.3f}, or run fewer rounds "
        "or a smaller federation.fraction",
    )
