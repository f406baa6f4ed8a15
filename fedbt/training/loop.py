"""The one training loop: local training on a client and centralised fine-tuning both run through it.

It also owns the measurements of a training pass: compute seconds (see :class:`ComputeClock`; wall seconds
beside them), FLOPs counted by torch's ``FlopCounterMode`` over the first ``flop_count_steps`` real steps
(extrapolated per sequence), and peak memory (CUDA: ``max_memory_allocated``; CPU: the process's peak RSS, reset
before the pass on Linux).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from fedbt.training.objectives import Objective


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


# torch's FlopCounterMode counts the CUDA attention kernels but not the CPU one (it reports 0 FLOPs);
# count it with the same formula so that measured FLOPs include attention on every device.
ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


@dataclass
class TrainResult:
    """What one training pass did and cost."""

    steps: int
    examples: int
    tokens: int
    predicted_tokens: int
    mean_loss: float
    seconds: float
    """Compute seconds of the pass (:class:`ComputeClock`)."""
    wall_seconds: float
    measured_flops: int
    peak_memory_bytes: int


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when present (the device ``CUDA_VISIBLE_DEVICES`` exposes first), else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 autocast on CUDA for ``auto``/``bf16``; none (fp32) on CPU unless ``bf16`` is asked for."""
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda":
        return torch.bfloat16
    return None


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, no weight decay on 1-D tensors (biases and LayerNorm/norm weights,
    whatever the model calls them: BERT's rule, decided by shape)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def batches(examples: Sequence[dict], batch_size: int, steps: int, generator: torch.Generator) -> Iterator[list[dict]]:
    """``steps`` batches drawn epoch by epoch from a fresh permutation each epoch (last batch may be short)."""
    produced = 0
    while produced < steps:
        order = torch.randperm(len(examples), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            yield [examples[i] for i in order[start : start + batch_size]]
            produced += 1
            if produced == steps:
                return


def steps_for(num_examples: int, batch_size: int, epochs: float, steps: int | None) -> int:
    """Number of optimizer steps: ``steps`` if given, else ``epochs`` passes over the data."""
    if steps is not None:
        return steps
    return max(1, math.ceil(epochs * math.ceil(num_examples / batch_size)))


def train(
    model: nn.Module,
    objective: Objective,
    examples: Sequence[dict],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    generator: torch.Generator,
    device: torch.device,
    precision: str = "auto",
    max_grad_norm: float | None = 1.0,
    flop_count_steps: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    extra_loss: Callable[[], torch.Tensor | None] | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters for ``steps`` steps and measure the pass.

    A fresh AdamW (``lr``, ``weight_decay``) is made unless ``optimizer`` is given (to continue one across
    several calls, e.g. epochs of centralised fine-tuning, or a method's own local optimizer). ``extra_loss``
    (e.g. a proximal term) is added to the objective's loss at every step; the mean loss reported is the
    objective's alone.
    """
    model.train()
    optimizer = optimizer if optimizer is not None else adamw(model, lr, weight_decay)
    trainable = [p for p in model.parameters() if p.requires_grad]
    amp_dtype = autocast_dtype(device, precision)
    peak = PeakMemory(device)
    total_loss, counted_flops, counted_examples = 0.0, 0, 0
    examples_seen = tokens = predicted = 0
    clock = ComputeClock(device)
    for step, batch_examples in enumerate(batches(examples, batch_size, steps, generator)):
        batch = {k: v.to(device, non_blocking=True) for k, v in objective.collate(batch_examples, generator).items()}
        counter = FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) if step < flop_count_steps else None
        with counter or contextlib.nullcontext():
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = objective.loss(model, batch)
            extra = extra_loss() if extra_loss is not None else None
            (loss if extra is None else loss + extra).backward()
        if counter is not None:
            counted_flops += counter.get_total_flops()
            counted_examples += len(batch_examples)
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total_loss += loss.item()
        examples_seen += len(batch_examples)
        tokens += objective.input_tokens(batch)
        predicted += objective.predicted_tokens(batch)
    seconds, wall_seconds = clock.stop()
    # Sequences are padded to one length, so FLOPs scale with the number of sequences (a short last batch too).
    measured = round(counted_flops * examples_seen / counted_examples) if counted_examples else 0
    return TrainResult(
        steps=steps,
        examples=examples_seen,
        tokens=tokens,
        predicted_tokens=predicted,
        mean_loss=total_loss / steps,
        seconds=seconds,
        wall_seconds=wall_seconds,
        measured_flops=measured,
        peak_memory_bytes=peak.read(),
    )


def training_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes a client holds to train ``model``, activations excluded: every parameter, a gradient per trainable
    parameter and the optimizer's state tensors (AdamW: two moments), counted from the tensors themselves
    (deterministic, unlike peak memory)."""
    params = list(model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in params)
    nbytes += sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    for state in optimizer.state.values():
        nbytes += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t) and t.dim() > 0)
    return nbytes


class ComputeClock:
    """Seconds of computation that other processes on the machine do not bend.

    CPU: the process's CPU time (user + system, all its threads; with one thread per job, as the pipeline
    runs them, the time the job itself computed, however busy the other cores are). CUDA: wall time between
    device synchronisations (the device's time, launch overhead included). :attr:`wall` is plain wall time.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._sync()
        self._cpu, self._wall = time.process_time(), time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def stop(self) -> tuple[float, float]:
        """``(compute seconds, wall seconds)`` since construction."""
        self._sync()
        wall = time.perf_counter() - self._wall
        return (wall if self.device.type == "cuda" else time.process_time() - self._cpu), wall


class PeakMemory:
    """Peak memory from construction to :meth:`read`: CUDA allocator peak, or CPU peak RSS (VmHWM)."""

    _STATUS = Path("/proc/self/status")
    _CLEAR_REFS = Path("/proc/self/clear_refs")

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            with contextlib.suppress(OSError):
                self._CLEAR_REFS.write_text("5")  # Linux: reset the peak RSS to the current RSS

    def read(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        try:
            for line in self._STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@torch.no_grad()
def predict(
    model: nn.Module, objective: Objective, examples: Sequence[dict], batch_size: int, device: torch.device
) -> list[int] | list[list[int]]:
    """Argmax predictions for ``examples`` in order: one class per example (sequence classification) or
    one class per input token (token classification, trimmed to the example's length)."""
    model.eval()
    predictions: list = []
    amp_dtype = autocast_dtype(device, "auto")
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = objective.collate(chunk, None)
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            argmax = model(**batch).logits.argmax(-1).cpu()
        if argmax.dim() == 1:
            predictions += argmax.tolist()
        else:
            predictions += [row[: len(e["input_ids"])].tolist() for row, e in zip(argmax, chunk, strict=True)]
    return predictions


@torch.no_grad()
def eval_loss(
    model: nn.Module,
    objective: Objective,
    examples: Sequence[dict],
    batch_size: int,
    device: torch.device,
    seed: int,
) -> float:
    """Mean loss of ``objective`` over ``examples`` (fixed masking from ``seed``), e.g. held-out MLM loss."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    amp_dtype = autocast_dtype(device, "auto")
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = {k: v.to(device) for k, v in objective.collate(chunk, generator).items()}
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            total += objective.loss(model, batch).item() * len(chunk)
        count += len(chunk)
    return total / max(count, 1)
