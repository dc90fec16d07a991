"""Sizes every estimator shares: bytes per dtype, bytes of a blockwise-quantized tensor (the
one home of the NF4 / double-quantization formula), the precision regimes of training
(:class:`Precision`) and the optimizers whose state is sized (:data:`OPTIMIZERS`).

Pure Python (no torch), at the bottom of the layers: the models, memory and quantization layers
import it, and so does the oracle (:mod:`labkit.memory.measure`) without importing the estimator.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from labkit import LabkitError
from labkit.checks import choice, positive

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

#: The optimizers whose state the estimator sizes (:func:`labkit.memory.estimator.optimizer_bytes`)
#: and :func:`labkit.memory.measure.make_optimizer` builds: what each keeps per trainable parameter.
OPTIMIZERS = {
    "adamw": "m and v in the parameter's dtype (8 B per fp32 parameter) + a 4-byte step per tensor",
    "sgd": "one momentum buffer in the parameter's dtype (4 B per fp32 parameter)",
    "adafactor": "a row and a column of second moments per matrix + a 4-byte RMS per tensor",
    "adamw8bit": "uint8 m and v (2 B per parameter) + an fp32 absmax per 256 values",
}

#: Precision regimes of training: ``fp32``; ``bf16-mixed``/``fp16-mixed`` (autocast with fp32
#: master weights); ``bf16`` (pure: everything in bf16).
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed", "bf16")


@dataclass(frozen=True)
class Precision:
    """A precision regime of training, read once instead of sliced from its name.

    ``name``: one of :data:`PRECISIONS` (or a pure ``fp16``, which only the activation
    derivation takes). ``compute``: the dtype activations are computed in; ``mixed``: autocast
    to ``compute`` on fp32 master weights; ``weights``: the dtype the trainable weights (and
    their gradients and optimizer state) are kept in.
    """

    name: str

    def __post_init__(self) -> None:
        choice("precision", self.name, (*PRECISIONS, "fp16"))

    @property
    def mixed(self) -> bool:
        return self.name.endswith("-mixed")

    @property
    def compute(self) -> str:
        return self.name.removesuffix("-mixed")

    @property
    def weights(self) -> str:
        return "fp32" if self.mixed else self.compute

    @property
    def words(self) -> str:
        """The regime in words: "fp32", "pure bf16", "bf16 autocast"."""
        if self.mixed:
            return f"{self.compute} autocast"
        return self.name if self.name == "fp32" else f"pure {self.name}"


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
