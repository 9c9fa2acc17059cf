"""float32 -> float16 conversion without numpy's slow path for tiny values."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["to_float16"]

#: the smallest normal float16; below it float16 values are subnormal, m x 2**-24
_TINY = np.float32(2.0**-14)
_SUB_UNIT = np.float32(2.0**24)


def to_float16(x: npt.ArrayLike) -> npt.NDArray[np.float16]:
    """``np.asarray(x, float32).astype(np.float16)``, bit for bit, faster on probabilities.

    numpy converts each value whose float16 result is subnormal (``|x| < 2**-14``) in a
    slow per-element branch: a 5 x 2048² unit of softmax probabilities from the demo
    U-Net (35-44 % of them that small) took 0.52 s against 0.03 s for values in the
    normal range, more than the unit's Zarr write.  Here the normal values go through
    numpy's fast path and the subnormal ones are computed as integers: a float16
    subnormal is ``m * 2**-24`` with ``m = rint(|x| * 2**24)`` (IEEE 754 round half to
    even; ``m = 1024`` is the bit pattern of the smallest normal, 2**-14, so values
    rounding up into the normal range come out right too), plus the sign bit.

    Parameters
    ----------
    x : array_like
        Values (converted to float32 first).

    Returns
    -------
    ndarray of float16
        Same shape.
    """
    x = np.asarray(x, dtype=np.float32)
    a = np.abs(x)
    small = a < _TINY  # NaN compares False: it takes numpy's own path
    bits = np.where(small, np.float32(1.0), x).astype(np.float16).view(np.uint16)
    np.minimum(a, _TINY, out=a)
    a *= _SUB_UNIT  # exact: a power of two
    np.rint(a, out=a)
    sub = a.astype(np.uint16)
    sub |= np.signbit(x).astype(np.uint16) << np.uint16(15)
    np.copyto(bits, sub, where=small)
    return bits.view(np.float16)
