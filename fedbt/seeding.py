"""Seeds of the run's independent random streams (partition, client sampling, data order, dropout, ...)."""

import hashlib


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from a base seed and integer keys, stable across runs and platforms."""
    text = ":".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)
