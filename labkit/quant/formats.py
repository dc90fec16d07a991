"""Floating-point formats from first principles: sign, exponent, mantissa.

A float of ``E`` exponent bits and ``M`` mantissa bits stores ``(-1)^s * 2^(e - bias) * (1 + m/2^M)``
(normal numbers, ``0 < e < 2^E - 1``) or ``(-1)^s * 2^(1 - bias) * (m/2^M)`` (subnormals, ``e = 0``),
with ``bias = 2^(E-1) - 1``. Everything the course says about fp32 / fp16 / bf16 / fp8 (range,
precision, overflow) follows from the two widths; :data:`FORMATS` holds them and
:func:`format_table` computes the figures, which the tests check against ``torch.finfo``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass

import torch

import labkit
from labkit import LabkitError
from labkit.checks import number


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: widths, and how it spends the all-ones exponent.

    ``ieee`` formats (fp64/32/16, bf16, fp8 e5m2) reserve the all-ones exponent for inf/NaN.
    fp8 e4m3 ("fn": finite, NaN only) keeps it for numbers except mantissa all-ones (NaN), and
    fp4 e2m1 (OCP MX) has neither inf nor NaN.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    special: str  # "ieee", "fn" (no inf, one NaN pattern per sign), "none" (no inf, no NaN)
    dtype: torch.dtype | None

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def max_exponent_field(self) -> int:
        """Largest exponent field that encodes finite numbers."""
        top = 2**self.exponent_bits - 1
        return top - 1 if self.special == "ieee" else top

    @property
    def max(self) -> float:
        """Largest finite value."""
        m = 2**self.mantissa_bits - 1
        if self.special == "fn":
            m -= 1  # the all-ones pattern is NaN
        return 2.0 ** (self.max_exponent_field - self.bias) * (1 + m / 2**self.mantissa_bits)

    @property
    def smallest_normal(self) -> float:
        return 2.0 ** (1 - self.bias)

    @property
    def smallest_subnormal(self) -> float:
        return 2.0 ** (1 - self.bias - self.mantissa_bits)

    @property
    def eps(self) -> float:
        """Machine epsilon: the gap between 1 and the next representable number."""
        return 2.0**-self.mantissa_bits

    @property
    def decimal_digits(self) -> float:
        """About how many significant decimal digits the mantissa holds."""
        return (self.mantissa_bits + 1) * math.log10(2)


FORMATS: dict[str, FloatFormat] = {
    f.name: f
    for f in (
        FloatFormat("fp64", 11, 52, "ieee", torch.float64),
        FloatFormat("fp32", 8, 23, "ieee", torch.float32),
        FloatFormat("fp16", 5, 10, "ieee", torch.float16),
        FloatFormat("bf16", 8, 7, "ieee", torch.bfloat16),
        FloatFormat("fp8_e4m3", 4, 3, "fn", torch.float8_e4m3fn),
        FloatFormat("fp8_e5m2", 5, 2, "ieee", torch.float8_e5m2),
        FloatFormat("fp4_e2m1", 2, 1, "none", None),
    )
}

#: What each convention spends its top exponent on (the "special" column of the table).
SPECIAL_VALUES = {
    "ieee": "±inf, NaN (top exponent reserved)",
    "fn": "NaN only (top exponent holds numbers)",
    "none": "no inf, no NaN",
}

_INT_VIEW = {64: torch.int64, 32: torch.int32, 16: torch.int16, 8: torch.uint8}


def get_format(fmt: str | FloatFormat) -> FloatFormat:
    """A :class:`FloatFormat` by name (``fp32``, ``bf16``, ``fp8_e4m3``...), or the format itself."""
    if isinstance(fmt, FloatFormat):
        return fmt
    if fmt not in FORMATS:
        raise labkit.unknown("float format", fmt, FORMATS)
    return FORMATS[fmt]


@dataclass(frozen=True)
class FloatBits:
    """A value split into its fields, as stored in ``fmt`` (after rounding to it)."""

    format: str
    sign: int
    exponent: int  # the stored (biased) field
    mantissa: int  # the stored fraction field
    value: float  # the value the fields encode
    kind: str  # "zero", "subnormal", "normal", "inf" or "nan"

    def bit_string(self, sep: str = " ") -> str:
        """``'0 10000000 1001001...'``: sign, exponent, mantissa bits."""
        f = FORMATS[self.format]
        e = format(self.exponent, f"0{f.exponent_bits}b")
        m = format(self.mantissa, f"0{f.mantissa_bits}b")
        return sep.join((str(self.sign), e, m))


def _fields_value(f: FloatFormat, sign: int, exponent: int, mantissa: int) -> tuple[float, str]:
    """The value and kind of a field triple, from the formula in the module docstring."""
    s = -1.0 if sign else 1.0
    top = 2**f.exponent_bits - 1
    m_all = 2**f.mantissa_bits - 1
    if f.special == "ieee" and exponent == top:
        return (s * math.inf, "inf") if mantissa == 0 else (math.nan, "nan")
    if f.special == "fn" and exponent == top and mantissa == m_all:
        return math.nan, "nan"
    frac = mantissa / 2**f.mantissa_bits
    if exponent == 0:
        if mantissa == 0:
            return s * 0.0, "zero"
        return s * 2.0 ** (1 - f.bias) * frac, "subnormal"
    return s * 2.0 ** (exponent - f.bias) * (1 + frac), "normal"


def encode(sign: int, exponent: int, mantissa: int, fmt: str | FloatFormat) -> float:
    """The value of the given sign / exponent / mantissa fields in ``fmt``."""
    f = get_format(fmt)
    for name, v, width in (
        ("sign", sign, 1),
        ("exponent", exponent, f.exponent_bits),
        ("mantissa", mantissa, f.mantissa_bits),
    ):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise LabkitError(
                f"{name} field {v!r} is not an integer; accepted: an integer 0..{2**width - 1}"
            )
        if not 0 <= int(v) < 2**width:
            raise LabkitError(
                f"{name} field {v} does not fit {f.name}; accepted: 0..{2**width - 1}"
            )
    return _fields_value(f, int(sign), int(exponent), int(mantissa))[0]


def _nearest_by_table(f: FloatFormat, x: float) -> tuple[int, int, int]:
    """Round-to-nearest-even into a format torch lacks (fp4), by searching its few patterns."""
    best = None
    for code in range(2**f.bits):
        s, e, m = (
            code >> (f.bits - 1),
            (code >> f.mantissa_bits) & (2**f.exponent_bits - 1),
            code & (2**f.mantissa_bits - 1),
        )
        v, kind = _fields_value(f, s, e, m)
        if kind == "nan" or (s == 1) != (math.copysign(1, x) < 0):
            continue
        key = (abs(v - x), m & 1)  # ties go to the even mantissa
        if best is None or key < best[0]:
            best = (key, (s, e, m))
    assert best is not None
    return best[1]


def decode(x: float, fmt: str | FloatFormat) -> FloatBits:
    """Round ``x`` to ``fmt`` (as torch casts) and split it into sign, exponent and mantissa.

    For formats torch has, the fields are read from the stored bits (``tensor.view(int)``), so
    they are what the hardware holds, not a re-derivation.
    """
    f = get_format(fmt)
    try:
        if isinstance(x, str | bytes):
            raise TypeError
        x = float(x)
    except OverflowError:  # an int past float64's range (about 1.8e308)
        raise LabkitError(
            f"x is an integer of {len(str(abs(x)))} digits, beyond float64's range (about "
            "1.8e308); accepted: a number a float64 holds (float('inf') for infinity)"
        ) from None
    except (TypeError, ValueError, RuntimeError):
        raise LabkitError(
            f"x must be a number, got {x!r}; accepted: a float, an int or a one-value tensor"
        ) from None
    if f.dtype is None:
        if math.isnan(x) or math.isinf(x):
            raise LabkitError(f"{f.name} has no inf or NaN; accepted: finite numbers")
        x = max(-f.max, min(f.max, x))  # saturate, like the OCP MX spec
        sign, exponent, mantissa = _nearest_by_table(f, x)
    else:
        t = torch.tensor([x], dtype=torch.float64).to(f.dtype)
        raw = int(t.view(_INT_VIEW[f.bits]).item()) & (2**f.bits - 1)
        sign = raw >> (f.bits - 1)
        exponent = (raw >> f.mantissa_bits) & (2**f.exponent_bits - 1)
        mantissa = raw & (2**f.mantissa_bits - 1)
    value, kind = _fields_value(f, sign, exponent, mantissa)
    return FloatBits(
        format=f.name, sign=sign, exponent=exponent, mantissa=mantissa, value=value, kind=kind
    )


def round_to(x: torch.Tensor | float, fmt: str | FloatFormat) -> torch.Tensor:
    """``x`` rounded to ``fmt`` and returned as float64 (to print the stored value exactly)."""
    f = get_format(fmt)
    try:
        t = torch.as_tensor(x, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise LabkitError(
            f"x must be a number, a list of numbers or a tensor, got {x!r:.80} ({err}); "
            "accepted: floats, ints or a tensor"
        ) from None
    if f.dtype is None:
        flat = [decode(v, f).value for v in t.reshape(-1).tolist()]
        return torch.tensor(flat, dtype=torch.float64).reshape(t.shape)
    return t.to(f.dtype).to(torch.float64)


def format_table(names: list[str] | None = None) -> list[dict]:
    """One row per format: bits, widths, bias, max, smallest normal / subnormal, eps, digits."""
    rows = []
    for name in names or list(FORMATS):
        f = get_format(name)
        rows.append(
            {
                "format": f.name,
                "bits": f.bits,
                "exponent_bits": f.exponent_bits,
                "mantissa_bits": f.mantissa_bits,
                "bias": f.bias,
                "max": f.max,
                "smallest_normal": f.smallest_normal,
                "smallest_subnormal": f.smallest_subnormal,
                "eps": f.eps,
                "decimal_digits": round(f.decimal_digits, 2),
                "has_inf": f.special == "ieee",
                "special": SPECIAL_VALUES[f.special],
            }
        )
    return rows


def _table_cell(column: str, value: object) -> str:
    if column == "max" and isinstance(value, float) and value < 1e6 and value.is_integer():
        return f"{value:,.0f}"  # in full, as the text quotes it: 65,504, not 6.55e+04
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_table_markdown(names: list[str] | None = None) -> str:
    """:func:`format_table` as a Markdown table (numbers in ``%.4g``; an integer ``max`` below 10^6
    in full, e.g. fp16's 65,504)."""
    rows = format_table(names)
    cols = [
        "format",
        "bits",
        "exponent_bits",
        "mantissa_bits",
        "max",
        "smallest_normal",
        "smallest_subnormal",
        "eps",
        "decimal_digits",
        "special",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [_table_cell(c, r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def representable_values(
    fmt: str | FloatFormat, lo: float = -math.inf, hi: float = math.inf
) -> torch.Tensor:
    """Every finite value of ``fmt`` in ``[lo, hi]``, sorted (float64), for number-line plots.

    Enumerates all bit patterns, so only formats of at most 16 bits are accepted.
    """
    f = get_format(fmt)
    lo = number("lo, the lower end of [lo, hi],", lo, finite=False)
    hi = number("hi, the upper end of [lo, hi],", hi, finite=False)
    if f.bits > 16:
        raise LabkitError(
            f"{f.name} has 2^{f.bits} values, too many to list; accepted: formats of <= 16 bits"
        )
    if f.dtype is None:
        vals = [
            _fields_value(
                f,
                c >> (f.bits - 1),
                (c >> f.mantissa_bits) & (2**f.exponent_bits - 1),
                c & (2**f.mantissa_bits - 1),
            )[0]
            for c in range(2**f.bits)
        ]
        t = torch.tensor(vals, dtype=torch.float64)
    else:
        codes = torch.arange(2**f.bits, dtype=torch.int64)
        if f.bits == 16:
            codes = torch.where(codes >= 2**15, codes - 2**16, codes).to(torch.int16)
        else:
            codes = codes.to(torch.uint8)
        t = codes.view(f.dtype).to(torch.float64)
    t = t[torch.isfinite(t) & (t >= lo) & (t <= hi)]
    return torch.unique(t)  # sorted; +0 and -0 merge


def spacing(x: torch.Tensor | float, fmt: str | FloatFormat) -> torch.Tensor:
    """The gap between ``|x|`` and the next representable value of ``fmt`` (one ulp), float64.

    Normal numbers: ``2^(floor(log2|x|) - M)``; below the smallest normal the gap is constant.
    """
    f = get_format(fmt)
    a = torch.as_tensor(x, dtype=torch.float64).abs()
    if not torch.isfinite(a).all():
        raise LabkitError("spacing needs finite values; accepted: finite numbers")
    e = torch.floor(torch.log2(a.clamp(min=f.smallest_normal)))
    return torch.pow(2.0, e - f.mantissa_bits)


def relative_spacing(x: torch.Tensor | float, fmt: str | FloatFormat) -> torch.Tensor:
    """``spacing(x) / |x|``: the relative precision at magnitude ``x`` (about eps/2..eps for normals)."""
    a = torch.as_tensor(x, dtype=torch.float64).abs()
    if (a == 0).any():
        raise LabkitError("relative spacing is undefined at 0; accepted: non-zero values")
    return spacing(a, fmt) / a


def best_loss_scale(
    grads: torch.Tensor,
    scales: tuple[float, ...] = (1.0, 2.0**8, 2.0**16, 2.0**24),
    small: float = 1e-4,
) -> float:
    """Of ``scales``, the loss-scaling factor that sends no gradient to ``inf`` in fp16 and leaves
    the fewest small ones (``0 < |g| < small``) with a relative error above fp16's rounding of a
    normal value (2^-11) after the round trip ``(g * scale).half() / scale``: too small a factor
    leaves them subnormal or zero, too large overflows the largest; ties go to the first listed
    (notebook 04, exercise 04.3). A share, not a median: the median hides the tail of subnormals."""
    if not isinstance(grads, torch.Tensor) or not grads.is_floating_point():
        raise LabkitError(f"grads must be a float tensor, got {type(grads).__name__}")
    g = grads.detach().flatten().double()
    tiny = g[(g.abs() < number("small", small, above=0)) & (g != 0)]
    if tiny.numel() == 0 or not torch.isfinite(g).all():
        raise LabkitError(f"grads need finite values and some with 0 < |g| < {small:g}")
    rounding = 2.0 ** -(FORMATS["fp16"].mantissa_bits + 1)  # a normal value's worst relative error
    errors = {}
    for s in scales:
        back = (g * s).half().double() / s
        if not torch.isinf(back).any():
            tiny_back = (tiny * s).half().double() / s
            rel = (tiny_back - tiny).abs() / tiny.abs()
            errors[s] = (rel > rounding).double().mean().item()
    if not errors:
        raise LabkitError(f"every factor of {scales} overflows fp16; accepted: smaller factors")
    return min(errors, key=errors.get)


@contextlib.contextmanager
def largest_linear_grads(net: torch.nn.Module, scale: float = 1.0) -> Iterator[dict[str, float]]:
    """Yield a dict that a backward run inside the block fills with the largest ``|gradient|`` of
    every ``nn.Linear``'s output and of its input, divided by ``scale`` (the loss-scaling factor).

    These are the activation gradients fp16 autocast computes in fp16 and passes from layer to
    layer: an overflow there spreads to every weight before it, so a safe loss-scale factor must
    keep them finite too, not only the weights' own gradients (notebook 04 §5).
    """
    scale = number("scale", scale, above=0.0)
    top = {"layer outputs": 0.0, "layer inputs": 0.0}

    def keep(kind: str):
        def hook(grad: torch.Tensor) -> None:
            top[kind] = max(top[kind], grad.detach().abs().max().item() / scale)

        return hook

    def on_forward(_module, inputs, out) -> None:
        if out.requires_grad:
            out.register_hook(keep("layer outputs"))
        if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].requires_grad:
            inputs[0].register_hook(keep("layer inputs"))

    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    hooks = [m.register_forward_hook(on_forward) for m in linears]
    try:
        yield top
    finally:
        for h in hooks:
            h.remove()
