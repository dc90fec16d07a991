"""4-bit codebook quantization from first principles (notebook 06).

Each value, scaled by its block's absmax, maps to the nearest level of a 16-code table: linear
int4 (15 distinct levels), NF4 (16), bitsandbytes' FP4 (15: it has ±0), or levels fitted to the
data (QLoRA's quantile estimator, symmetric equal-count). :func:`nf4_quantize` is bit-identical to
bitsandbytes' ``quantize_4bit(..., quant_type="nf4")``. Double quantization of the block constants
(QLoRA) and what 4-bit really costs per weight (:func:`bits_per_parameter`, from the one bytes
formula :func:`labkit.dtypes.quantized_bytes`). Builds on :mod:`labkit.quant.integer`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch

import labkit
from labkit import LabkitError
from labkit.checks import positive
from labkit.dtypes import quantized_bytes
from labkit.quant.integer import absmax_quantize, check_bits, check_tensor

# --------------------------------------------------------------------------------------------
# 4-bit codebooks: int4 (linear), NF4, FP4, quantile
# --------------------------------------------------------------------------------------------

#: NF4 levels as bitsandbytes stores them (``get_4bit_type("nf4")``), sorted: index = 4-bit code.
NF4_CODE = torch.tensor(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
     0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
     0.7229568362236023, 1.0],
    dtype=torch.float32,
)  # fmt: skip

#: bitsandbytes' FP4 (1 sign, 2 exponent, 1 mantissa bit, its own bias), in bit-pattern order
#: (code 0b0xyz positive, 0b1xyz negative), magnitudes {0, 0.0625, 2, 3, 4, 6, 8, 12} / 12.
FP4_CODE = (
    torch.tensor(
        [
            0,
            0.0625,
            8.0,
            12.0,
            4.0,
            6.0,
            2.0,
            3.0,
            -0.0,
            -0.0625,
            -8.0,
            -12.0,
            -4.0,
            -6.0,
            -2.0,
            -3.0,
        ]
    )
    / 12.0
)

#: Linear (uniform) symmetric int4 levels -7..7 scaled to [-1, 1] (15 levels: one of the 16
#: codes is unused, so that 0 is exact and the levels are symmetric). FP4 above has 16 codes but
#: 15 distinct values (+0 and -0).
INT4_CODE = torch.arange(-7, 8, dtype=torch.float32) / 7.0


def nf4_code_from_normal(offset: float = 0.9677083) -> torch.Tensor:
    """Derive NF4 from N(0, 1) as QLoRA does: 8 positive quantiles between ``offset`` and 0.5,
    7 negative ones, plus an exact 0, normalised to [-1, 1] (asymmetric: 0 must be exact).

    ``offset`` is the outermost quantile (QLoRA: the mean of (1 - 1/(2·15)) and (1 - 1/(2·16))).
    """
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    pos = normal.icdf(torch.linspace(offset, 0.5, 9)[:-1].double())
    neg = -normal.icdf(torch.linspace(offset, 0.5, 8)[:-1].double())
    values = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).float().sort().values
    return values / values.max()


def _scaled_sample(x: torch.Tensor, blocksize: int | None) -> torch.Tensor:
    """``x`` scaled into [-1, 1] (per block of ``blocksize`` if given), flat; subsampled to
    torch.quantile's input limit (2^24 values) with a fixed seed."""
    check_tensor(x)
    if blocksize is None:
        flat = (x.float() / x.abs().max().clamp(min=1e-38)).flatten()
    else:
        _check_blocks(x, blocksize)
        blocks = x.float().reshape(-1, blocksize)
        flat = (blocks / blocks.abs().amax(1, keepdim=True).clamp(min=1e-38)).flatten()
    if flat.numel() > 2**24:
        keep = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[: 2**24]
        flat = flat[keep]
    return flat


def quantile_code(x: torch.Tensor, bits: int = 4, blocksize: int | None = None) -> torch.Tensor:
    """QLoRA's quantile-quantization estimator fitted to ``x``: with ``p_i = i / (2^b + 1)``,
    level ``i = (Q(p_i) + Q(p_(i+1))) / 2`` for ``i < 2^b``, ``Q`` the empirical quantile of
    ``x`` scaled into [-1, 1] (per block of ``blocksize`` if given, as the levels will be used);
    the end levels are then pinned to ±1, where every block's largest value lands.

    The estimator is lopsided: the lowest level starts from ``Q(0) = -1`` but the highest stops at
    ``Q(2^b / (2^b + 1))``, so on bell-shaped data pinning leaves a wide gap below +1 (about
    0.4 → 1). :func:`equal_count_code` is the symmetric version.
    """
    check_bits(bits)
    flat = _scaled_sample(x, blocksize)
    k = 2**bits
    q = torch.quantile(flat, torch.arange(k + 1, dtype=torch.float32) / (k + 1))
    levels = ((q[:-1] + q[1:]) / 2).sort().values
    # every block's largest value scales to exactly ±1: pin the end levels there (as NF4 does),
    # otherwise the estimator's outermost levels clip the most important weights
    levels[0], levels[-1] = -1.0, 1.0
    return levels


def equal_count_code(x: torch.Tensor, bits: int = 4, blocksize: int | None = None) -> torch.Tensor:
    """Symmetric equal-count levels fitted to ``x``: level ``i`` is the empirical quantile at
    ``(i + 0.5) / 2^b`` of ``x`` scaled into [-1, 1] (per block of ``blocksize`` if given), so
    each level is the median of its own equal share of the values; nothing pinned."""
    check_bits(bits)
    flat = _scaled_sample(x, blocksize)
    k = 2**bits
    return torch.quantile(flat, (torch.arange(k, dtype=torch.float32) + 0.5) / k)


def _check_blocks(x: torch.Tensor, blocksize: int) -> None:
    check_tensor(x)
    integer = isinstance(blocksize, numbers.Integral) and not isinstance(blocksize, bool)
    if not integer or blocksize < 2 or blocksize % 2:  # a numpy integer is an integer
        raise LabkitError(f"blocksize must be an even integer >= 2, got {blocksize!r}")
    if x.numel() % blocksize:
        raise LabkitError(
            f"{x.numel()} values do not split into blocks of {blocksize}; "
            "accepted: a number of values divisible by the blocksize"
        )


def codebook_quantize(
    x: torch.Tensor, code: torch.Tensor, blocksize: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax + nearest level: ``(indices uint8, absmax float32 per block)``.

    Each block of ``blocksize`` consecutive values (flattened) is scaled into [-1, 1] by its
    absmax, then every value takes the index of the nearest entry of ``code`` (found by
    comparing with the midpoints between sorted levels; an exact tie goes to the lower level).
    Scaling multiplies by ``1 / absmax`` rather than dividing: that is what bitsandbytes does,
    and the last bit matters for exact agreement.
    """
    _check_blocks(x, blocksize)
    blocks = x.float().reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1)).clamp(-1, 1)
    order = torch.argsort(code)  # code may be stored unsorted (FP4: bit-pattern order)
    levels = code[order]
    midpoints = (levels[:-1] + levels[1:]) / 2
    nearest = torch.bucketize(scaled.reshape(-1), midpoints, out_int32=True)
    return order[nearest].to(torch.uint8), absmax


def codebook_dequantize(
    idx: torch.Tensor,
    absmax: torch.Tensor,
    code: torch.Tensor,
    shape: Iterable[int],
    blocksize: int = 64,
) -> torch.Tensor:
    """``code[idx] * absmax`` per block, reshaped to ``shape`` (float32)."""
    values = code[idx.long()].reshape(-1, blocksize) * absmax.float().unsqueeze(1)
    return values.reshape(tuple(shape))


def pack_4bit(idx: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte, first in the high nibble: shape ``(n/2, 1)`` like bitsandbytes."""
    flat = idx.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        raise LabkitError(f"{flat.numel()} codes cannot pack in pairs; accepted: an even count")
    return ((flat[0::2] << 4) | flat[1::2]).unsqueeze(1)


def unpack_4bit(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_4bit`: a flat uint8 tensor of codes."""
    flat = packed.reshape(-1).to(torch.uint8)
    return torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)


def _quantize_packed(x: torch.Tensor, code: torch.Tensor, blocksize: int):
    idx, absmax = codebook_quantize(x, code.to(x.device), blocksize)
    return pack_4bit(idx), absmax


def _dequantize_packed(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    shape: Iterable[int],
    code: torch.Tensor,
    blocksize: int,
) -> torch.Tensor:
    shape = tuple(shape)
    _check_packed(packed, absmax, shape, blocksize)
    return codebook_dequantize(
        unpack_4bit(packed), absmax, code.to(packed.device), shape, blocksize
    )


def nf4_quantize(x: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """NF4: ``(packed uint8 (n/2, 1), absmax float32 (n/blocksize,))``, bit-identical to
    ``bitsandbytes.functional.quantize_4bit(x, quant_type="nf4", blocksize, compress_statistics=False)``.
    """
    return _quantize_packed(x, NF4_CODE, blocksize)


def nf4_dequantize(
    packed: torch.Tensor, absmax: torch.Tensor, shape: Iterable[int], blocksize: int = 64
) -> torch.Tensor:
    """Invert :func:`nf4_quantize` (float32), like bitsandbytes' ``dequantize_4bit``."""
    return _dequantize_packed(packed, absmax, shape, NF4_CODE, blocksize)


def fp4_quantize(x: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' FP4 with blockwise absmax: ``(packed, absmax)`` like :func:`nf4_quantize`."""
    return _quantize_packed(x, FP4_CODE, blocksize)


def fp4_dequantize(
    packed: torch.Tensor, absmax: torch.Tensor, shape: Iterable[int], blocksize: int = 64
) -> torch.Tensor:
    """Invert :func:`fp4_quantize` (float32)."""
    return _dequantize_packed(packed, absmax, shape, FP4_CODE, blocksize)


def _check_packed(
    packed: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, ...], blocksize: int
) -> None:
    for name, t in (("packed", packed), ("absmax", absmax)):
        if not isinstance(t, torch.Tensor):
            raise LabkitError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if packed.dtype != torch.uint8:
        raise LabkitError(
            f"packed has dtype {packed.dtype}; accepted: the uint8 codes nf4_quantize returned"
        )
    n = math.prod(shape)
    if n == 0 or packed.numel() * 2 != n or absmax.numel() * blocksize != n:
        raise LabkitError(
            f"packed ({packed.numel()} bytes) and absmax ({absmax.numel()} blocks) do not match shape "
            f"{shape} with blocksize {blocksize}; accepted: what nf4_quantize returned for that shape"
        )


def fake_quantize_4bit(x: torch.Tensor, kind: str = "nf4", blocksize: int = 64) -> torch.Tensor:
    """Quantize to a 4-bit codebook and back, same dtype as x. ``kind``: ``int4``, ``nf4``,
    ``fp4``, ``quantile`` or ``equal-count``.

    ``int4`` is linear (uniform) absmax with levels -7..7; ``quantile`` and ``equal-count`` use
    levels fitted to ``x`` itself (:func:`quantile_code`, :func:`equal_count_code`; stored per
    tensor, 16 floats).
    """
    codes = {"int4": INT4_CODE, "nf4": NF4_CODE, "fp4": FP4_CODE}
    fitted = {"quantile": quantile_code, "equal-count": equal_count_code}
    if kind in fitted:
        code = fitted[kind](x, 4, blocksize)
    elif kind in codes:
        code = codes[kind]
    else:
        raise labkit.unknown("4-bit kind", kind, [*codes, *fitted])
    idx, absmax = codebook_quantize(x, code.to(x.device), blocksize)
    return codebook_dequantize(idx, absmax, code.to(x.device), x.shape, blocksize).to(x.dtype)


# --------------------------------------------------------------------------------------------
# double quantization and what 4-bit really costs
# --------------------------------------------------------------------------------------------


def double_quantize(
    absmax: torch.Tensor, blocksize: int = 256, bits: int = 8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize the fp32 block constants themselves (QLoRA): subtract their mean, then absmax
    ``bits``-bit in blocks of ``blocksize`` → ``(q int8, scale per block, offset)``.

    (bitsandbytes quantizes with its 8-bit "dynamic" code instead of linear int8; the cost in
    bits is the same.) A final partial block is allowed, as in bitsandbytes.
    """
    check_tensor(absmax, "absmax")
    check_bits(bits)
    if not isinstance(blocksize, int) or blocksize < 1:
        raise LabkitError(f"blocksize must be a positive integer, got {blocksize!r}")
    offset = absmax.float().mean()
    centred = absmax.float().reshape(-1) - offset
    pad = (-centred.numel()) % blocksize
    padded = torch.nn.functional.pad(centred, (0, pad)).reshape(-1, blocksize)
    q, scale = absmax_quantize(padded, bits, axis=-1)
    return q.reshape(-1)[: centred.numel()], scale.reshape(-1), offset


def double_dequantize(
    q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, blocksize: int = 256
) -> torch.Tensor:
    """Recover the block constants from :func:`double_quantize` (float32)."""
    n = q.numel()
    pad = (-n) % blocksize
    padded = torch.nn.functional.pad(q.float(), (0, pad)).reshape(-1, blocksize)
    return (padded / scale.reshape(-1, 1)).reshape(-1)[:n] + offset


def bits_per_parameter(
    bits: int = 4,
    blocksize: int | None = 64,
    double_quant: bool = False,
    dq_blocksize: int = 256,
    absmax_bits: int = 32,
) -> float:
    """Storage per weight: ``bits + absmax_bits / blocksize`` (+ double quantization:
    ``bits + 8 / blocksize + 32 / (blocksize * dq_blocksize)``; NF4 + DQ = 4.127), from the one
    bytes formula the memory estimator uses (:func:`labkit.dtypes.quantized_bytes`)."""
    positive("bits", bits)
    if blocksize is None:
        return float(bits)
    n = blocksize * dq_blocksize  # whole blocks: the per-weight cost without rounding up
    kw = dict(double_quant=double_quant, dq_blocksize=dq_blocksize, absmax_bits=absmax_bits)
    return 8 * quantized_bytes(n, bits, blocksize, **kw) / n
