"""Quantization from first principles, in plain vectorised torch: the reference a learner can read.

Integer quantization maps floats to ``n``-bit integers with a scale (and a zero point): absmax
(symmetric) and zero-point (asymmetric) at any granularity (per tensor, per channel, per group).
4-bit "codebook" quantization (NF4, FP4, quantile) maps each value, scaled by its block's absmax,
to the nearest of 16 levels. :func:`nf4_quantize` is bit-identical to bitsandbytes'
``quantize_4bit(..., quant_type="nf4")``. Layers: :class:`W8A16Linear` and :class:`NF4Linear` (one
:class:`WeightOnlyLinear` base: they differ only in how they dequantize),
:class:`W8A8Linear` (with SmoothQuant), and :func:`quantize_model` to swap every ``nn.Linear``.

Conventions (as in the course's worked examples): ``scale = qmax / absmax``, ``q = round(scale * x)``,
``x ≈ q / scale``; one quantization step is ``1 / scale`` and round-to-nearest errs by at most half
a step. Granularity: ``axis`` is the dimension whose values SHARE a scale (``None``: the whole
tensor); ``group_size`` splits that axis into groups of consecutive values. For a weight
``[out, in]``: per-tensor ``axis=None``, per-output-channel (one scale per row) ``axis=-1``, one
scale per column ``axis=0``, groups of 128 along each row ``axis=-1, group_size=128``.

It is one module of about 750 lines because notebooks 05-07 teach one progression (integer
quantization, 4-bit codebooks, quantized layers and SmoothQuant) in which each part reuses the
quantizers before it; a learner finds all of it under one name, in the order it is taught.

It is one module of about 800 lines because each scheme (absmax, zero-point, groups, NF4, LLM.int8,
SmoothQuant) is a few reference functions that the layers and notebooks 05-07 use together; each
part is short.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch
from torch import nn

import labkit
from labkit import LabkitError
from labkit.checks import positive
from labkit.dtypes import quantized_bytes

# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _check_bits(bits: int) -> int:
    """``bits`` as an ``int`` (a numpy integer too) if it is in 2..8, else one line."""
    if not isinstance(bits, numbers.Integral) or isinstance(bits, bool):
        raise LabkitError(f"bits must be an integer in 2..8, got {bits!r}")
    if not 2 <= bits <= 8:
        raise LabkitError(f"bits must be an integer in 2..8, got {int(bits)}")
    return int(bits)


def _check_tensor(x: torch.Tensor, what: str = "input") -> None:
    if not isinstance(x, torch.Tensor):
        raise LabkitError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise LabkitError(
            f"{what} is empty (shape {tuple(x.shape)}); accepted: a tensor with values"
        )
    if not x.is_floating_point():
        raise LabkitError(f"{what} has dtype {x.dtype}; accepted: a floating-point tensor")
    if not torch.isfinite(x).all():
        raise LabkitError(f"{what} contains NaN or inf; accepted: finite values only")


def _norm_axis(x: torch.Tensor, axis: int) -> int:
    if not -x.ndim <= axis < x.ndim:
        raise LabkitError(f"axis {axis} is out of range for a {x.ndim}-D tensor")
    return axis % x.ndim


# --------------------------------------------------------------------------------------------
# granularity: per-tensor / per-channel / group-wise statistics
# --------------------------------------------------------------------------------------------


def group_reduce(
    x: torch.Tensor, op: str = "absmax", axis: int | None = None, group_size: int | None = None
) -> torch.Tensor:
    """``absmax``, ``min`` or ``max`` over the values that share a scale.

    The result keeps ``x``'s number of dims: size 1 along ``axis`` (one group), ``n / group_size``
    there for groups, all ones for per-tensor. :func:`expand_groups` broadcasts it back.
    """
    _check_tensor(x)
    fns = {"absmax": lambda t, d: t.abs().amax(d), "min": torch.amin, "max": torch.amax}
    if op not in fns:
        raise labkit.unknown("reduction", op, fns)
    if axis is None:
        if group_size is not None:
            raise LabkitError(
                "group_size needs an axis to group along; accepted: axis=-1 or another dim"
            )
        return fns[op](x, tuple(range(x.ndim))).reshape([1] * x.ndim)
    axis = _norm_axis(x, axis)
    n = x.shape[axis]
    g = n if group_size is None else group_size
    if not isinstance(g, int) or g < 1 or n % g:
        raise LabkitError(
            f"group size {group_size} does not divide the axis of length {n}; "
            "accepted: a positive divisor of that length"
        )
    moved = x.movedim(axis, -1)
    grouped = moved.reshape(*moved.shape[:-1], n // g, g)
    return fns[op](grouped, -1).movedim(-1, axis)


def expand_groups(stat: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Repeat a group statistic from :func:`group_reduce` so it lines up with a tensor of ``shape``.

    The statistic must have the shape :func:`group_reduce` gives: all ones (per tensor), or
    ``shape`` with one dim 1 (per channel) or a divisor of it (groups); else one clear line.
    """
    shape = tuple(shape)
    have = tuple(stat.shape) if isinstance(stat, torch.Tensor) else None
    differ = [] if have is None else [d for d in range(len(shape)) if have[d] != shape[d]]
    per_tensor = have is not None and all(n == 1 for n in have)
    if (
        have is None
        or len(have) != len(shape)
        or not per_tensor
        and (len(differ) > 1 or any(shape[d] % have[d] for d in differ))
    ):
        raise LabkitError(
            f"scale of shape {have} does not fit a tensor of shape {shape}; accepted: the scale "
            "that quantizing this tensor returned (all ones, or its shape with one dim grouped)"
        )
    out = stat
    for d, (have, want) in enumerate(zip(stat.shape, shape, strict=True)):
        if have not in (1, want):
            out = out.repeat_interleave(want // have, dim=d)
    return out.expand(tuple(shape))


# --------------------------------------------------------------------------------------------
# integer quantization: absmax (symmetric) and zero-point (asymmetric)
# --------------------------------------------------------------------------------------------


def qrange(bits: int, signed: bool = True) -> tuple[int, int]:
    """Integer range used: symmetric ``[-(2^(b-1)-1), 2^(b-1)-1]`` (int8: ±127) or full ``[-2^(b-1), 2^(b-1)-1]``."""
    _check_bits(bits)
    top = 2 ** (bits - 1) - 1
    return (-top, top) if signed else (-(top + 1), top)


_TINY = 2.0**-126  # float32's smallest normal number


def _int_dtype(bits: int) -> torch.dtype:
    return torch.int8


def absmax_quantize(
    x: torch.Tensor, bits: int = 8, axis: int | None = None, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization: ``scale = qmax / max|x|``, ``q = round(scale * x)`` → ``(q, scale)``.

    ``q`` is int8 (any ``bits`` in 2..8 fits), ``scale`` float32 shaped as :func:`group_reduce`.
    A group of zeros gets scale 1 (its values are exactly 0 anyway).
    """
    _check_tensor(x)
    bits = _check_bits(bits)
    lo, hi = qrange(bits)
    amax = group_reduce(x.float(), "absmax", axis, group_size)
    # (a group of tiny values would overflow the fp32 scale: its range is floored at hi * 2^-126)
    scale = torch.where(amax > 0, hi / amax.clamp(min=hi * _TINY), torch.ones_like(amax))
    q = torch.round(x.float() * expand_groups(scale, x.shape)).clamp(lo, hi)
    return q.to(_int_dtype(bits)), scale


def absmax_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q / scale`` (float32), the inverse of :func:`absmax_quantize`."""
    return q.float() / expand_groups(scale, q.shape)


def zeropoint_quantize(
    x: torch.Tensor, bits: int = 8, axis: int | None = None, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric quantization onto the full range ``[-2^(b-1), 2^(b-1)-1]``.

    ``scale = (2^b - 1) / (max - min)``, ``zp = round(-scale * min) - 2^(b-1)``,
    ``q = clip(round(scale * x + zp))`` → ``(q, scale, zero_point)``. A constant group has no
    range: its range is stretched to include 0 so the constant stays representable.
    """
    _check_tensor(x)
    bits = _check_bits(bits)
    lo, hi = qrange(bits, signed=False)
    xf = x.float()
    mn = group_reduce(xf, "min", axis, group_size)
    mx = group_reduce(xf, "max", axis, group_size)
    flat = mx == mn
    mn = torch.where(flat, mn.clamp(max=0), mn)
    mx = torch.where(flat, mx.clamp(min=0), mx)
    width = mx - mn
    top = 2**bits - 1
    scale = torch.where(width > 0, top / width.clamp(min=top * _TINY), torch.ones_like(width))
    zero_point = torch.round(-scale * mn) - 2 ** (bits - 1)
    q = torch.round(xf * expand_groups(scale, x.shape) + expand_groups(zero_point, x.shape))
    return q.clamp(lo, hi).to(_int_dtype(bits)), scale, zero_point.to(torch.int32)


def zeropoint_dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
) -> torch.Tensor:
    """``(q - zp) / scale`` (float32), the inverse of :func:`zeropoint_quantize`."""
    return (q.float() - expand_groups(zero_point, q.shape).float()) / expand_groups(scale, q.shape)


def fake_quantize(
    x: torch.Tensor,
    bits: int = 8,
    axis: int | None = None,
    group_size: int | None = None,
    method: str = "absmax",
) -> torch.Tensor:
    """Quantize then dequantize (same dtype as ``x``): what the model sees after quantization."""
    if method == "absmax":
        out = absmax_dequantize(*absmax_quantize(x, bits, axis, group_size))
    elif method == "zeropoint":
        out = zeropoint_dequantize(*zeropoint_quantize(x, bits, axis, group_size))
    else:
        raise labkit.unknown("method", method, ("absmax", "zeropoint"))
    return out.to(x.dtype)


# --------------------------------------------------------------------------------------------
# error metrics
# --------------------------------------------------------------------------------------------


def quant_error(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, float]:
    """MSE, max absolute error and signal-to-quantization-noise ratio (dB) of ``x_hat`` vs ``x``.

    ``SQNR = 10 log10(sum x^2 / sum (x - x_hat)^2)``; each extra bit adds about 6 dB.
    """
    _check_tensor(x, "reference")
    if not isinstance(x_hat, torch.Tensor):
        raise LabkitError(
            f"x_hat must be a tensor, got {type(x_hat).__name__}; accepted: a torch.Tensor "
            "of the reference's shape"
        )
    if not torch.isfinite(x_hat).all():
        raise LabkitError("x_hat contains NaN or inf; accepted: finite values only")
    if x.shape != x_hat.shape:
        raise LabkitError(
            f"shapes differ: {tuple(x.shape)} vs {tuple(x_hat.shape)}; accepted: equal shapes"
        )
    x64, d = x.double(), x.double() - x_hat.double()
    noise = float((d**2).sum())
    signal = float((x64**2).sum())
    sqnr = math.inf if noise == 0 else 10 * math.log10(signal / noise) if signal > 0 else -math.inf
    return {"mse": float((d**2).mean()), "max_error": float(d.abs().max()), "sqnr_db": sqnr}


# --------------------------------------------------------------------------------------------
# vector-wise int8 matmul and LLM.int8()
# --------------------------------------------------------------------------------------------


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for int8 matrices, as int32: what an int8 GEMM with int32 accumulators returns.

    The sums are computed in float64 (fast BLAS on any CPU), which holds every integer below
    2^53 exactly, so the result equals an int32 accumulation (``|sum| <= 127^2 * k``).
    """
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise LabkitError(f"int8_matmul takes int8 tensors, got {a.dtype} and {b.dtype}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise LabkitError(
            f"inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)}; "
            "accepted: a (m, k) and b (n, k), the product is a @ b.T"
        )
    if 127**2 * a.shape[-1] >= 2**31:
        raise LabkitError(
            f"inner dimension {a.shape[-1]} could overflow int32; accepted: < 133,000"
        )
    return (a.double() @ b.double().T).to(torch.int32)


def int8_linear_vectorwise(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` in int8 with one scale per row of ``x`` (token) and per row of ``weight``
    (output channel = a column of ``weight.T``), accumulated exactly in int32 and rescaled once:
    ``y = (Xq @ Wq.T) / (sx ⊗ sw)``.
    """
    _check_tensor(x, "x")
    _check_tensor(weight, "weight")
    if x.shape[-1] != weight.shape[-1]:
        raise LabkitError(f"x has {x.shape[-1]} features, weight expects {weight.shape[-1]}")
    x2 = x.reshape(-1, x.shape[-1])
    qx, sx = absmax_quantize(x2, 8, axis=-1)  # sx: [tokens, 1]
    qw, sw = absmax_quantize(weight, 8, axis=-1)  # sw: [out, 1]
    acc = int8_matmul(qx, qw)
    y = acc.float() / (sx * sw.T)
    return y.reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)


def outlier_columns(x: torch.Tensor, threshold: float = 6.0) -> torch.Tensor:
    """Indices of feature columns holding any ``|x| >= threshold`` (LLM.int8()'s outliers)."""
    x2 = x.reshape(-1, x.shape[-1])
    return torch.nonzero((x2.abs() >= threshold).any(dim=0)).flatten()


def llm_int8_linear(
    x: torch.Tensor, weight: torch.Tensor, threshold: float = 6.0, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """LLM.int8() mixed decomposition of ``x @ weight.T``: outlier feature columns (any
    ``|x| >= threshold``) multiply in floating point, the rest in vector-wise int8; summed.
    """
    _check_tensor(x, "x")
    _check_tensor(weight, "weight")
    if weight.ndim != 2 or x.shape[-1] != weight.shape[-1]:
        raise LabkitError(
            f"x has {x.shape[-1]} features, weight {tuple(weight.shape)} expects "
            f"{weight.shape[-1]}; accepted: a weight of shape (out, {x.shape[-1]})"
        )
    cols = outlier_columns(x, threshold)
    keep = torch.ones(x.shape[-1], dtype=torch.bool, device=x.device)
    keep[cols] = False
    y = torch.zeros(*x.shape[:-1], weight.shape[0], dtype=torch.float32, device=x.device)
    if keep.any():
        y += int8_linear_vectorwise(x[..., keep].float(), weight[:, keep].float())
    if len(cols):
        y += x[..., cols].float() @ weight[:, cols].float().T
    if bias is not None:
        y += bias.float()
    return y.to(x.dtype)


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

#: Linear (uniform) symmetric int4 levels -7..7 scaled to [-1, 1] (15 levels; one code unused).
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


def quantile_code(x: torch.Tensor, bits: int = 4, blocksize: int | None = None) -> torch.Tensor:
    """Quantile quantization levels fitted to ``x``: each level takes about the same number of
    values. With ``p_i = i / (2^b + 1)``, level ``i = (Q(p_i) + Q(p_(i+1))) / 2`` for
    ``i < 2^b`` (QLoRA's estimator), ``Q`` the empirical quantile of ``x`` scaled into [-1, 1]
    (per block of ``blocksize`` if given, as the levels will be used).
    """
    _check_bits(bits)
    _check_tensor(x)
    k = 2**bits
    if blocksize is None:
        flat = (x.float() / x.abs().max().clamp(min=1e-38)).flatten()
    else:
        _check_blocks(x, blocksize)
        blocks = x.float().reshape(-1, blocksize)
        flat = (blocks / blocks.abs().amax(1, keepdim=True).clamp(min=1e-38)).flatten()
    if flat.numel() > 2**24:  # torch.quantile's input limit; a fixed subsample estimates it well
        flat = flat[
            torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[: 2**24]
        ]
    q = torch.quantile(flat, torch.arange(k + 1, dtype=torch.float32) / (k + 1))
    levels = ((q[:-1] + q[1:]) / 2).sort().values
    # every block's largest value scales to exactly ±1: pin the end levels there (as NF4 does),
    # otherwise the estimator's outermost levels (~±0.8) clip the most important weights
    levels[0], levels[-1] = -1.0, 1.0
    return levels


def _check_blocks(x: torch.Tensor, blocksize: int) -> None:
    _check_tensor(x)
    if not isinstance(blocksize, int) or blocksize < 2 or blocksize % 2:
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
    """Quantize to a 4-bit codebook and back (``kind``: int4, nf4, fp4, quantile), same dtype as x.

    ``int4`` is linear (uniform) absmax with levels -7..7; ``quantile`` uses levels fitted to
    ``x`` itself by :func:`quantile_code` (stored per tensor, 16 floats).
    """
    codes = {"int4": INT4_CODE, "nf4": NF4_CODE, "fp4": FP4_CODE}
    if kind == "quantile":
        code = quantile_code(x, 4, blocksize)
    elif kind in codes:
        code = codes[kind]
    else:
        raise labkit.unknown("4-bit kind", kind, ("int4", "nf4", "fp4", "quantile"))
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
    _check_tensor(absmax, "absmax")
    _check_bits(bits)
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


# --------------------------------------------------------------------------------------------
# layers and model surgery
# --------------------------------------------------------------------------------------------


class WeightOnlyLinear(nn.Module):
    """A linear layer that stores its weight quantized and dequantizes it inside ``forward``,
    just before the matmul, which runs in the input's floating-point dtype. Subclasses differ
    only in how they store the weight and how :meth:`dequantized_weight` recovers it."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = (
            None
            if linear.bias is None
            else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        )

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(
            x,
            self.dequantized_weight(x.dtype),
            None if self.bias is None else self.bias.to(x.dtype),
        )


class W8A16Linear(WeightOnlyLinear):
    """Weight-only int8: int8 weights with per-output-channel (or per-group) absmax scales."""

    def __init__(self, linear: nn.Linear, group_size: int | None = None):
        super().__init__(linear)
        q, scale = absmax_quantize(linear.weight.detach(), 8, axis=-1, group_size=group_size)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return absmax_dequantize(self.qweight, self.scale).to(dtype)


class NF4Linear(WeightOnlyLinear):
    """Weight-only NF4 (blockwise absmax, 64): packed 4-bit codes and one absmax per block."""

    def __init__(self, linear: nn.Linear, blocksize: int = 64):
        super().__init__(linear)
        self.blocksize = blocksize
        packed, absmax = nf4_quantize(linear.weight.detach().float(), blocksize)
        self.register_buffer("packed", packed)
        self.register_buffer("absmax", absmax)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        shape = (self.out_features, self.in_features)
        return nf4_dequantize(self.packed, self.absmax, shape, self.blocksize).to(dtype)


def smoothquant_scales(
    act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5
) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors ``s_j = max|X_j|^α / max|W_j|^(1-α)``.

    Dividing activations by ``s`` and multiplying weight input-columns by ``s`` leaves
    ``X @ W.T`` unchanged but moves the quantization difficulty from outlier activation channels
    into the weights (α = 0: none moved; α = 1: all).
    """
    _check_tensor(act_absmax, "act_absmax")
    if not 0.0 <= alpha <= 1.0:
        raise LabkitError(f"alpha must be in [0, 1], got {alpha}")
    if act_absmax.shape != (weight.shape[-1],):
        raise LabkitError(
            f"act_absmax has shape {tuple(act_absmax.shape)}, expected ({weight.shape[-1]},)"
        )
    w_absmax = weight.detach().float().abs().amax(dim=0)
    s = act_absmax.float().clamp(min=1e-5) ** alpha / w_absmax.clamp(min=1e-5) ** (1 - alpha)
    return s.clamp(min=1e-5)


class W8A8Linear(nn.Module):
    """W8A8: int8 weights (per output channel) and int8 activations quantized per token on the
    fly, int32 accumulation, one rescale after the matmul (:func:`int8_linear_vectorwise`).

    With ``smooth`` (from :func:`smoothquant_scales`) the weight columns are multiplied by it and
    the input divided by it first. In a deployed model ``1/s`` is folded into the previous
    LayerNorm/RMSNorm weight for free; here it is an explicit multiply so any ``nn.Linear`` works.
    """

    def __init__(self, linear: nn.Linear, smooth: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        if smooth is not None:
            w = w * smooth.float().unsqueeze(0)
            self.register_buffer("inv_smooth", 1.0 / smooth.float())
        else:
            self.inv_smooth = None
        q, scale = absmax_quantize(w, 8, axis=-1)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.bias = (
            None
            if linear.bias is None
            else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if self.inv_smooth is None else x.float() * self.inv_smooth
        x2 = xf.reshape(-1, self.in_features)
        qx, sx = absmax_quantize(x2, 8, axis=-1)  # per token, computed at run time
        acc = int8_matmul(qx, self.qweight)
        y = acc.float() / (sx * self.scale.T)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def linear_names(model: nn.Module, skip: Iterable[str] = ("lm_head",)) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` whose last name part is not in ``skip``."""
    skip = set(skip)
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.split(".")[-1] not in skip
    ]


@torch.no_grad()
def collect_input_absmax(
    model: nn.Module, batches: Iterable[dict], names: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """Per-input-channel ``max |x|`` seen by each ``nn.Linear`` over calibration ``batches``
    (dicts passed as ``model(**batch)``): the statistic SmoothQuant needs.
    """
    names = list(linear_names(model) if names is None else names)
    stats: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())

    def hook(name):
        def fn(_module, inputs, _output):
            a = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1]).abs().amax(0)
            stats[name] = a if name not in stats else torch.maximum(stats[name], a)

        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        for batch in batches:
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return stats


def quantize_model(
    model: nn.Module,
    kind: str = "w8a16",
    skip: Iterable[str] = ("lm_head",),
    act_absmax: dict[str, torch.Tensor] | None = None,
    alpha: float = 0.5,
) -> list[str]:
    """Replace every ``nn.Linear`` (except names ending in ``skip``) in place; returns their names.

    ``kind``: ``w8a16`` (:class:`W8A16Linear`), ``nf4`` (:class:`NF4Linear`), ``w8a8``
    (:class:`W8A8Linear`) or ``smoothquant`` (W8A8 after smoothing with ``act_absmax`` from
    :func:`collect_input_absmax` and migration strength ``alpha``).
    """
    kinds = ("w8a16", "nf4", "w8a8", "smoothquant")
    if kind not in kinds:
        raise labkit.unknown("kind", kind, kinds)
    if kind == "smoothquant" and act_absmax is None:
        raise LabkitError(
            "smoothquant needs act_absmax (from collect_input_absmax); accepted: a dict name -> tensor"
        )
    names = linear_names(model, skip)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        if kind == "w8a16":
            new = W8A16Linear(linear)
        elif kind == "nf4":
            new = NF4Linear(linear)
        elif kind == "w8a8":
            new = W8A8Linear(linear)
        else:
            if name not in act_absmax:
                raise LabkitError(
                    f"no activation statistics for {name!r}; run collect_input_absmax on this model"
                )
            new = W8A8Linear(linear, smoothquant_scales(act_absmax[name], linear.weight, alpha))
        setattr(parent, child, new)
    return names


@torch.no_grad()
def logit_difference(
    model_a: nn.Module, model_b: nn.Module, input_ids: torch.Tensor
) -> dict[str, float]:
    """Max and mean absolute difference of two models' logits on ``input_ids``, and how often
    their next-token argmax agrees."""
    a = model_a(input_ids=input_ids).logits.float()
    b = model_b(input_ids=input_ids).logits.float()
    d = (a - b).abs()
    return {
        "max_abs": float(d.max()),
        "mean_abs": float(d.mean()),
        "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
    }
