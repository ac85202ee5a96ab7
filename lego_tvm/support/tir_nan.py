"""A NaN test that TVM's vectorizer keeps in vector lanes.

TVM 0.27's ``VectorizeLoop`` leaves a loop whose body calls ``isnan`` scalar (found with the
bf16 gather-sum and the NaN-keeping max-pool: the loop came out as 16 serial iterations, then
LLVM vectorized the 56x56 max-pool to 0.5 ms with gathers). Comparing the bits is plain integer
arithmetic, which it vectorizes.
"""
from __future__ import annotations

from tvm import tirx

# float32: exponent all ones and a nonzero mantissa
_ABS_MASK, _INFINITY = 0x7FFFFFFF, 0x7F800000


def is_nan(value):
    """Whether ``value`` is NaN: from its bits for float32, ``isnan`` for other types."""
    ty = getattr(value, "ty", None)     # a PrimExpr's type; a te tensor element has .dtype
    if str(ty.dtype if ty is not None else value.dtype) != "float32":
        return tirx.isnan(value)
    bits = tirx.reinterpret("uint32", value)
    return tirx.bitwise_and(bits, tirx.const(_ABS_MASK, "uint32")) > tirx.const(_INFINITY,
                                                                                 "uint32")
