"""Counter-based randomness: the value drawn for (seed, stream, a, b) never depends on the
order or the batches in which values are drawn, so the same seed gives the same city
whether it runs live, compressed, in one process or in a test."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: U64) -> U64:
    """splitmix64's finaliser: a bijection on 64-bit integers with full avalanche."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _key(seed: int, stream: int, a: npt.ArrayLike, b: npt.ArrayLike) -> U64:
    a64 = np.asarray(a).astype(np.uint64)
    b64 = np.asarray(b).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = _mix(np.full(np.broadcast(a64, b64).shape, np.uint64(seed & 0xFFFFFFFFFFFFFFFF)) + _GOLDEN)
        h = _mix(h ^ np.uint64(stream & 0xFFFFFFFFFFFFFFFF))
        h = _mix(h + a64 * _GOLDEN)
        return _mix(h + b64)


def uniform(seed: int, stream: int, a: npt.ArrayLike, b: npt.ArrayLike = 0) -> F64:
    """Uniform in [0, 1), one per element of broadcast(a, b)."""
    return (_key(seed, stream, a, b) >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def gauss(seed: int, stream: int, a: npt.ArrayLike, b: npt.ArrayLike = 0) -> F64:
    """Standard normal (Box-Muller over two independent uniforms)."""
    u1 = 1.0 - uniform(seed, stream, a, b)  # (0, 1]: log is finite
    u2 = uniform(seed, stream ^ 0x5BD1E995, a, b)
    result: F64 = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return result


def stream_id(*names: str) -> int:
    """A stable stream number for a name (Python's hash() is salted per process)."""
    h = 1469598103934665603
    for ch in "/".join(names).encode():
        h = ((h ^ ch) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h
