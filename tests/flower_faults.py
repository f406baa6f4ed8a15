"""A plugin method for the Flower fault tests: SCAFFOLD whose clients fail, stall or whose server crashes on cue.

Loaded with ``plugins=[tests/flower_faults.py]``; its options say who misbehaves and when. The faults fire in
the hooks of the side they belong to: a client raises or sleeps in ``upload_extra`` (after its local training,
in its ClientApp), the server raises in ``aggregate`` once, leaving a marker file so that the resumed run
goes on (as a ServerApp killed mid-round would leave its last checkpoint). SCAFFOLD, so that the faults meet
client state kept on the nodes, a server state and extras in both directions.
"""

import time
from dataclasses import dataclass
from pathlib import Path

from baselines.scaffold import Scaffold
from fedbt.federated.method import register


@register
class FaultyScaffold(Scaffold):
    name = "test-faulty-scaffold"
    description = "SCAFFOLD with injected faults (tests only): a failing or stalling client, a crashing server"
    scenarios = ("pretrain", "finetune")

    @dataclass
    class Options:
        fail_client: int = -1
        """This client's ClientApp raises in round ``fault_round``."""
        slow_client: int = -1
        """This client's ClientApp sleeps ``slow_seconds`` in round ``fault_round`` before replying."""
        slow_seconds: float = 0.0
        fault_round: int = 0
        crash_marker: str = ""
        """The server raises in ``aggregate`` of round ``fault_round`` unless this file exists (it creates it)."""

    def upload_extra(self, client):
        if client.round_idx == self.options.fault_round:
            if client.client_id == self.options.fail_client:
                raise RuntimeError(f"injected failure of client {client.client_id}")
            if client.client_id == self.options.slow_client:
                time.sleep(self.options.slow_seconds)
        return super().upload_extra(client)

    def aggregate(self, global_params, averaged, round):
        marker = Path(self.options.crash_marker) if self.options.crash_marker else None
        if marker and round.round_idx == self.options.fault_round and not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected server crash in round {round.round_idx}")
        return super().aggregate(global_params, averaged, round)
