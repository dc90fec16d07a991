"""Sizes every estimator shares: bytes per dtype and bytes of a blockwise-quantized tensor (the
one home of the NF4 / double-quantization formula).

Pure Python (no torch), at the bottom of the layers: the models, memory and quantization layers
import it.
"""

from __future__ import annotations

import math
import numbers

from labkit import LabkitError
from labkit.checks import positive

#: bytes per element of the dtypes the estimators accept (``nf4`` is sized by
#: :func:`quantized_bytes`).
DTYPE_BYTES = {
    "fp32": 4,
    "float32": 4,
    "bf16": 2,
    "bfloat16": 2,
    "fp16": 2,
    "float16": 2,
    "int8": 1,
}
#: one short name per dtype (``bfloat16`` and ``bf16`` are the same dtype).
DTYPE_NAMES = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16"}
DTYPE_NAMES |= {"fp16": "fp16", "float16": "fp16", "int8": "int8"}


def quantized_bytes(
    numel: int,
    bits: int = 4,
    blocksize: int = 64,
    *,
    double_quant: bool = True,
    dq_blocksize: int = 256,
    absmax_bits: int = 32,
) -> float:
    """Bytes of ``numel`` weights quantized blockwise: ``bits``-bit codes plus one absmax per
    ``blocksize`` values (``absmax_bits``), or with double quantization (QLoRA) an 8-bit absmax
    per block plus one fp32 constant per ``dq_blocksize`` blocks:
    4 + 8/64 + 32/(64·256) = 4.127 bits per NF4 weight.
    """
    if isinstance(numel, bool) or not isinstance(numel, numbers.Integral) or numel < 0:
        whole = isinstance(numel, numbers.Integral) and not isinstance(numel, bool)
        shown = int(numel) if whole else repr(numel)  # a numpy integer as a number
        raise LabkitError(f"number of weights must be an integer >= 0, got {shown}")
    for name, value in (("bits", bits), ("blocksize", blocksize)):
        positive(name, value)
    for name, value in (("dq_blocksize", dq_blocksize), ("absmax_bits", absmax_bits)):
        positive(name, value)
    blocks = math.ceil(numel / blocksize)
    codes = numel * bits / 8
    if not double_quant:
        return codes + blocks * absmax_bits / 8
    return codes + blocks + 4 * math.ceil(blocks / dq_blocksize)
