"""Benchmark (a): overhead of the federated simulator over a plain PyTorch loop.

Both sides train MiniLM with masked LM on the same client data for the same number of local steps per
client per round (fresh AdamW per client, as FedAvg does). The simulator additionally copies global
weights into the local model, extracts and counts the upload, aggregates, counts FLOPs on one step and
checkpoints each round. Rounds alternate between the two sides so that machine noise hits both equally.
Prints the ratio simulator / plain (target <= 1.05).

    .venv/bin/python benchmarks/simulator_overhead.py [--clients 3 --steps 8 --rounds 2 --repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import minilm_and_corpus

from fedbt.config import LocalConfig
from fedbt.federated.method import create_method
from fedbt.federated.simulator import SimulationSetup, Simulator
from fedbt.ledger import Ledger
from fedbt.models import ModelArch
from fedbt.training.loop import adamw, batches
from fedbt.training.objectives import make_objective


def plain_rounds(model, objective, clients, rounds: int, steps: int, batch_size: int, lr: float) -> None:
    """The same local steps in a textbook loop: no weight copies, no aggregation, no bookkeeping."""
    model.train()
    for round_idx in range(rounds):
        for client_id, examples in enumerate(clients):
            generator = torch.Generator().manual_seed(round_idx * 1000 + client_id)
            optimizer = adamw(model, lr, 0.01)
            for batch_examples in batches(examples, batch_size, steps, generator):
                batch = objective.collate(batch_examples, generator)
                loss = objective.loss(model, batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)


def simulator_rounds(model, objective, clients, rounds: int, steps: int, batch_size: int, lr: float) -> float:
    """FedAvg rounds through the real simulator (ledger and checkpoints in a temporary directory); returns the
    seconds the simulator spent outside local training (weight copies, upload extraction, aggregation,
    checkpoints, ledger), measured inside the run and so insensitive to load on the machine between runs."""
    local = LocalConfig(steps=steps, batch_size=batch_size, lr=lr, flop_count_steps=1)
    setup = SimulationSetup(clients, objective, local, rounds, 1.0, "weighted", 0, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        method = create_method("fedavg", ModelArch.from_model(model), rounds, 0, {}, "pretrain")
        simulator = Simulator(model, method, setup, Ledger(Path(tmp) / "ledger.csv"), Path(tmp) / "ckpt", "bench")
        records = simulator.run()
    return sum(r["round_seconds"] - r["client_wall_seconds"] for r in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model, tokenizer, examples = minilm_and_corpus(args.max_length, args.clients * 200)
    objective = make_objective("mlm", tokenizer, max_length=args.max_length, padding="fixed")
    clients = [examples[i :: args.clients] for i in range(args.clients)]
    work = (args.rounds, args.steps, args.batch_size, 5e-5)
    plain_rounds(copy.deepcopy(model), objective, clients, 1, 1, args.batch_size, 5e-5)  # warm-up

    plain_times, sim_times, bookkeeping = [], [], []
    for _ in range(args.repeats):
        for runner, times in ((plain_rounds, plain_times), (simulator_rounds, sim_times)):
            fresh = copy.deepcopy(model)
            start = time.perf_counter()
            outside_training = runner(fresh, objective, clients, *work)
            times.append(time.perf_counter() - start)
            if outside_training is not None:
                bookkeeping.append(outside_training / times[-1])
    plain, sim = statistics.median(plain_times), statistics.median(sim_times)
    steps = args.rounds * args.clients * args.steps
    print(
        f"MiniLM MLM, {args.clients} clients x {args.rounds} rounds x {args.steps} steps "
        f"(batch {args.batch_size} x {args.max_length} tokens, {torch.get_num_threads()} threads)"
    )
    print(
        f"plain PyTorch loop : {plain:8.2f} s  ({plain / steps:.3f} s/step)  runs: {[round(t, 2) for t in plain_times]}"
    )
    print(f"fedbt simulator    : {sim:8.2f} s  ({sim / steps:.3f} s/step)   runs: {[round(t, 2) for t in sim_times]}")
    print(f"overhead ratio simulator / plain = {sim / plain:.3f}  (target <= 1.05)")
    print(
        f"simulator time outside local training (copies, aggregation, checkpoint, ledger): "
        f"{statistics.median(bookkeeping):.1%} of its wall time (within-run, load-insensitive)"
    )


if __name__ == "__main__":
    main()
