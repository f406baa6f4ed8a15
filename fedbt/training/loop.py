"""The one training loop: local training on a client and centralised fine-tuning both run through it.

Batches are padded to their longest sequence (dynamic padding; the objective decides) and, by default, grouped
by length (:func:`batches`: transformers' ``group_by_length``, the batch order shuffled). The input path is
ready for GPUs and changes nothing on CPU: batches are collated and counted on the host, copied from pinned
memory without blocking, the loss is summed on the device (one host sync per pass, not per step), AdamW is
fused on CUDA, TF32 matmuls and SDPA attention are on (:func:`configure_device`).

It also owns the measurements of a training pass: compute seconds (see :class:`ComputeClock`; wall seconds
beside them), the batch shapes (sequences and padded length of every step, from which :mod:`fedbt.costs`
computes the analytic FLOPs exactly), FLOPs counted by torch's ``FlopCounterMode`` over every step
(``flop_count_steps=-1``) or the first ``flop_count_steps`` (the others extrapolated by their real shapes;
:attr:`TrainResult.measured_steps` says how many were counted: see :func:`train`), and peak memory (CUDA:
``max_memory_allocated``; CPU: the process's peak RSS, reset before the pass on Linux).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from fedbt.data.tokens import example_lengths
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
    measured_steps: int = 0
    """Steps whose FLOPs ``FlopCounterMode`` counted (``steps``: ``measured_flops`` is a count, not a scaling)."""
    shapes: dict[int, list[int]] = field(default_factory=dict)
    """Padded length -> ``[sequences, predicted tokens]`` summed over the steps of that length."""


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when present (the device ``CUDA_VISIBLE_DEVICES`` exposes first), else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def device_name(device: torch.device | None = None) -> str:
    """A name for the device's kind, for throughput measurements: the CUDA device name, or ``cpu: <processor>``."""
    device = device or resolve_device("auto")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor() or platform.machine(),
        )
        if Path("/proc/cpuinfo").is_file()
        else platform.processor()
    )
    return f"cpu: {model} x {torch.get_num_threads()} threads"


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 autocast on CUDA for ``auto``/``bf16``; none (fp32) on CPU unless ``bf16`` is asked for."""
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda":
        return torch.bfloat16
    return None


def configure_device(device: torch.device) -> None:
    """TF32 matmuls and convolutions on CUDA (no effect on CPU); attention is PyTorch's SDPA (the models load with
    ``attn_implementation="sdpa"``, :func:`fedbt.models.load_model`)."""
    torch.set_float32_matmul_precision("high")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


NO_DECAY_TOKENS = frozenset({"cls_token", "position_embeddings", "mask_token"})
"""ViT's learnt tokens and position embeddings (``nn.Parameter``s named so, 3-D): undecayed, as in timm's ViT
(``no_weight_decay``) and SimMIM. BERT's ``position_embeddings.weight`` is an embedding table and is decayed."""


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether AdamW decays the parameter ``name``: not 1-D tensors (biases and LayerNorm/norm weights, whatever
    the model calls them: BERT's rule, decided by shape) nor :data:`NO_DECAY_TOKENS` (timm's rule for ViT)."""
    return param.ndim >= 2 and name.rsplit(".", 1)[-1] not in NO_DECAY_TOKENS


def adamw(model: nn.Module, lr: float, weight_decay: float, fused_on_cpu: bool = False) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, weight decay on those :func:`decays` picks; fused on CUDA, and on CPU
    with ``fused_on_cpu`` (else PyTorch's per-tensor loop there)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if decays(name, param) else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    trainable = decay + no_decay
    fused = bool(trainable) and (fused_on_cpu or all(p.is_cuda for p in trainable))
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, fused=fused or None)


MEGABATCH = 50
"""Batches per length-sorted group (transformers' LengthGroupedSampler uses the same factor)."""


def epoch_order(
    n: int, batch_size: int, generator: torch.Generator, lengths: np.ndarray | None = None
) -> list[list[int]]:
    """One epoch's batches of example indices: a fresh permutation cut into batches (the last may be short) or,
    with ``lengths``, the permutation cut into groups of ``MEGABATCH`` batches, each group sorted by length
    (longest first, stable) and cut into batches, then the batches shuffled."""
    order = torch.randperm(n, generator=generator).tolist()
    if lengths is None:
        return [order[start : start + batch_size] for start in range(0, n, batch_size)]
    group = batch_size * MEGABATCH
    grouped = []
    for start in range(0, n, group):
        members = sorted(order[start : start + group], key=lambda i: -int(lengths[i]))
        grouped += [members[k : k + batch_size] for k in range(0, len(members), batch_size)]
    shuffle = torch.randperm(len(grouped), generator=generator).tolist()
    return [grouped[i] for i in shuffle]


def batches(
    examples: Sequence[dict],
    batch_size: int,
    steps: int,
    generator: torch.Generator,
    lengths: np.ndarray | None = None,
) -> Iterator[list[dict]]:
    """``steps`` batches drawn epoch by epoch (:func:`epoch_order`; ``lengths`` groups them by length)."""
    produced = 0
    while produced < steps:
        for indices in epoch_order(len(examples), batch_size, generator, lengths):
            yield [examples[i] for i in indices]
            produced += 1
            if produced == steps:
                return


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch on ``device``: from pinned memory without blocking on CUDA, unchanged on CPU."""
    if device.type != "cuda":
        return batch
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def steps_for(num_examples: int, batch_size: int, epochs: float, steps: float | None, index: int = 0) -> int:
    """Number of optimizer steps: ``steps`` if given, else ``epochs`` passes over the data.

    A non-integer ``steps`` is a mean per client-round (a FLOP-matched budget, :mod:`fedbt.matching`): the
    ``index``-th client-round of the run (``round * clients + client``) runs :func:`dealt_steps` of it."""
    if steps is not None:
        return dealt_steps(steps, index)
    return max(1, math.ceil(epochs * math.ceil(num_examples / batch_size)))


def dealt_steps(mean: float, index: int) -> int:
    """The ``index``-th share of a mean of ``mean`` steps: ``floor((index + 1) * mean) - floor(index * mean)``, so
    that the first ``k`` client-rounds run ``floor(k * mean)`` steps in all (``mean`` itself for an integer)."""
    return _floor(mean * (index + 1)) - _floor(mean * index)


def _floor(value: float) -> int:
    """``floor`` that reads a product within 1e-9 of an integer as that integer (``3 * 1.2`` is 3.5999999...)."""
    return math.floor(value + 1e-9)


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
    clip_extra_loss: bool = True,
    group_by_length: bool = False,
    flops_model: Callable[[dict[int, list[int]]], int] | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters for ``steps`` steps and measure the pass.

    A fresh AdamW (``lr``, ``weight_decay``) is made unless ``optimizer`` is given (to continue one across several
    calls, e.g. epochs of centralised fine-tuning, or a method's own local optimizer). ``extra_loss`` (e.g. a
    proximal term) is added to the objective's loss at every step; the mean loss reported is the objective's alone.
    ``max_grad_norm`` clips the sum's gradient, or with ``clip_extra_loss=False`` only the objective's (the extra
    term's gradient is added after clipping). ``group_by_length`` batches examples of similar length. Measured FLOPs
    are counted on every step (``flop_count_steps=-1``) or on the first ``flop_count_steps`` (0: none) and then
    scaled to all steps by ``flops_model`` (the analytic FLOPs of given shapes: each step weighs by its own length,
    sequences and predicted tokens) or, without one, by the positions (sequences x padded length) the steps compute.
    Counting costs CPU time, which the compute seconds include: about 8 % of a MiniLM step at 32 tokens, 20-30 % of
    a tiny test model's (one CPU thread).
    """
    model.train()
    optimizer = optimizer if optimizer is not None else adamw(model, lr, weight_decay)
    trainable = [p for p in model.parameters() if p.requires_grad]
    amp_dtype = autocast_dtype(device, precision)
    peak = PeakMemory(device)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    counted_flops = counted_positions = positions = counted_steps = 0
    examples_seen = tokens = predicted = 0
    shapes: dict[int, list[int]] = {}
    counted_shapes: dict[int, list[int]] = {}
    lengths = example_lengths(examples) if group_by_length else None
    clock = ComputeClock(device)
    for step, batch_examples in enumerate(batches(examples, batch_size, steps, generator, lengths)):
        host = objective.collate(batch_examples, generator)
        sequences, length = objective.shape(host)
        batch_predicted = objective.predicted_tokens(host)
        tokens += objective.input_tokens(host)  # counted on the host: no device sync
        batch = to_device(host, device)
        counts = flop_count_steps < 0 or step < flop_count_steps
        counter = FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) if counts else None
        with counter or contextlib.nullcontext():
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = objective.loss(model, batch)
            extra = extra_loss() if extra_loss is not None else None
            clip_with_loss = extra is not None and (clip_extra_loss or max_grad_norm is None)
            (loss + extra if clip_with_loss else loss).backward()
        if counter is not None:
            counted_flops += counter.get_total_flops()
            counted_steps += 1
            counted_positions += sequences * length
            counted = counted_shapes.setdefault(length, [0, 0])
            counted[0] += sequences
            counted[1] += batch_predicted
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        if extra is not None and not clip_with_loss:
            extra.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total_loss += loss.detach().double()
        examples_seen += sequences
        predicted += batch_predicted
        positions += sequences * length
        shape = shapes.setdefault(length, [0, 0])
        shape[0] += sequences
        shape[1] += batch_predicted
    seconds, wall_seconds = clock.stop()
    if not counted_positions:
        measured = 0
    elif counted_steps == steps:
        measured = counted_flops
    elif flops_model is not None:  # each step weighs by its own shape and predicted tokens
        measured = round(counted_flops * flops_model(shapes) / max(flops_model(counted_shapes), 1))
    else:  # by the positions (sequences x padded length) the steps compute
        measured = round(counted_flops * positions / counted_positions)
    return TrainResult(
        steps=steps,
        examples=examples_seen,
        tokens=tokens,
        predicted_tokens=predicted,
        mean_loss=float(total_loss.item()) / steps,
        seconds=seconds,
        wall_seconds=wall_seconds,
        measured_flops=measured,
        peak_memory_bytes=peak.read(),
        measured_steps=counted_steps,
        shapes=shapes,
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
        batch = to_device({k: v for k, v in batch.items() if k != "labels"}, device)
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
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = to_device(objective.collate(chunk, generator), device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            total += objective.loss(model, batch).double() * len(chunk)
        count += len(chunk)
    return float(total.item()) / max(count, 1)
