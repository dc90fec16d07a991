"""Integer quantization from first principles, in plain vectorised torch (notebooks 05 and 07).

Integer quantization maps floats to ``n``-bit integers with a scale (and a zero point): absmax
(symmetric) and zero-point (asymmetric) at any granularity (per tensor, per channel, per group),
the error they make (:func:`quant_error`), and int8 matmuls: vector-wise (:func:`int8_linear_vectorwise`)
and LLM.int8()'s mixed decomposition (:func:`llm_int8_linear`). :mod:`labkit.quant.codebook` and
:mod:`labkit.quant.layers` build on it.

Conventions (as in the course's worked examples): ``scale = qmax / absmax``, ``q = round(scale * x)``,
``x ≈ q / scale``; one quantization step is ``1 / scale`` and round-to-nearest errs by at most half
a step. Granularity: ``axis`` is the dimension whose values SHARE a scale (``None``: the whole
tensor); ``group_size`` splits that axis into groups of consecutive values. For a weight
``[out, in]``: per-tensor ``axis=None``, per-output-channel (one scale per row) ``axis=-1``, one
scale per column ``axis=0``, groups of 128 along each row ``axis=-1, group_size=128``.
"""

from __future__ import annotations

import math
import numbers

import torch

import labkit
from labkit import LabkitError
from labkit.checks import number, positive

# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def check_bits(bits: int) -> int:
    """``bits`` as an ``int`` (a numpy integer too) if it is in 2..8, else one line."""
    if not isinstance(bits, numbers.Integral) or isinstance(bits, bool):
        raise LabkitError(f"bits must be an integer in 2..8, got {bits!r}")
    if not 2 <= bits <= 8:
        raise LabkitError(f"bits must be an integer in 2..8, got {int(bits)}")
    return int(bits)


#: The dtypes a quantizer takes as input (torch has no arithmetic for fp8 on CPU).
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_tensor(x: torch.Tensor, what: str = "input") -> None:
    """One line unless ``x`` is a non-empty, finite floating-point tensor (every quantizer's input)."""
    if not isinstance(x, torch.Tensor):
        raise LabkitError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise LabkitError(
            f"{what} is empty (shape {tuple(x.shape)}); accepted: a tensor with values"
        )
    if x.dtype not in FLOAT_DTYPES:
        raise LabkitError(
            f"{what} has dtype {x.dtype}; accepted: a floating-point tensor of "
            f"{', '.join(map(str, FLOAT_DTYPES))} (convert with .float())"
        )
    if x.device.type == "meta":
        raise LabkitError(
            f"{what} is on the meta device (a shape with no values); accepted: a tensor with "
            "values (CPU or CUDA)"
        )
    if not torch.isfinite(x).all():
        raise LabkitError(f"{what} contains NaN or inf; accepted: finite values only")


def _norm_axis(x: torch.Tensor, axis: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise LabkitError(
            f"axis must be an integer dim (or None for one scale per tensor), got {axis!r}"
        )
    if not -x.ndim <= axis < x.ndim:
        raise LabkitError(f"axis {axis} is out of range for a {x.ndim}-D tensor")
    return int(axis) % x.ndim


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
    check_tensor(x)
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
    g = n if group_size is None else positive("group size", group_size)
    if n % g:
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
    check_bits(bits)
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
    check_tensor(x)
    bits = check_bits(bits)
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
    check_tensor(x)
    bits = check_bits(bits)
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
    check_tensor(x, "reference")
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
    check_tensor(x, "x")
    check_tensor(weight, "weight")
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
    # NaN would match no column: outlier handling silently off (inf turns it off on purpose)
    if number("threshold", threshold, finite=False) <= 0:  # every column would be an "outlier"
        raise LabkitError(
            f"threshold must be > 0, got {threshold!r}; accepted: e.g. 6.0, or float('inf') for no "
            "decomposition (what bitsandbytes spells llm_int8_threshold=0.0)"
        )
    x2 = x.reshape(-1, x.shape[-1])
    return torch.nonzero((x2.abs() >= threshold).any(dim=0)).flatten()


def llm_int8_linear(
    x: torch.Tensor, weight: torch.Tensor, threshold: float = 6.0, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """LLM.int8() mixed decomposition of ``x @ weight.T``: outlier feature columns (any
    ``|x| >= threshold``) multiply in floating point, the rest in vector-wise int8; summed.
    """
    check_tensor(x, "x")
    check_tensor(weight, "weight")
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
