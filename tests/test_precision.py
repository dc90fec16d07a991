"""labkit.quant.formats: bit layouts and format figures, checked against torch."""

import math

import pytest
import torch

from labkit import LabkitError
from labkit.quant import formats

TORCH_FORMATS = [n for n, f in formats.FORMATS.items() if f.dtype is not None]


@pytest.mark.parametrize("name", TORCH_FORMATS)
def test_format_table_agrees_with_finfo(name):
    f = formats.FORMATS[name]
    fi = torch.finfo(f.dtype)
    row = {r["format"]: r for r in formats.format_table()}[name]
    assert row["bits"] == fi.bits
    assert row["max"] == fi.max
    assert row["smallest_normal"] == fi.smallest_normal
    assert row["eps"] == fi.eps
    # the smallest subnormal is the value of the bit pattern 0...01
    one = torch.tensor([1], dtype=torch.int64)
    raw = one.to({64: torch.int64, 32: torch.int32, 16: torch.int16, 8: torch.uint8}[f.bits])
    assert raw.view(f.dtype).double().item() == row["smallest_subnormal"]


def test_known_figures():
    rows = {r["format"]: r for r in formats.format_table()}
    assert rows["fp16"]["max"] == 65504
    assert rows["bf16"]["eps"] == 2**-7
    assert rows["fp8_e4m3"]["max"] == 448
    assert rows["fp8_e5m2"]["max"] == 57344
    assert rows["fp4_e2m1"]["max"] == 6
    table = formats.format_table_markdown()
    assert "| fp16 | 16 | 5 | 10 | 65,504 |" in table  # the maxima in full, as the text quotes them
    assert "| 448 |" in table and "| 57,344 |" in table and "| 3.403e+38 |" in table


@pytest.mark.parametrize("name", TORCH_FORMATS)
@pytest.mark.parametrize("x", [0.0, -0.0, 1.0, -2.5, 3.14159, 1e-3, 65504.0, 1e5, 6e-8, -1e-40])
def test_decode_matches_torch_cast_and_encode_inverts(name, x):
    bits = formats.decode(x, name)
    stored = torch.tensor([x], dtype=torch.float64).to(formats.FORMATS[name].dtype).double().item()
    if math.isnan(stored):
        assert bits.kind == "nan"
        return
    assert bits.value == stored
    assert math.copysign(1, bits.value) == math.copysign(1, stored)
    assert formats.encode(bits.sign, bits.exponent, bits.mantissa, name) == stored


def test_decode_fields_by_hand():
    b = formats.decode(1.0, "fp32")
    assert (b.sign, b.exponent, b.mantissa, b.kind) == (0, 127, 0, "normal")
    assert b.bit_string() == "0 01111111 " + "0" * 23
    b = formats.decode(-2.5, "bf16")  # -1.25 * 2^1
    assert (b.sign, b.exponent, b.mantissa) == (1, 128, 0b0100000)
    assert formats.decode(70000.0, "fp16").kind == "inf"
    assert formats.decode(70000.0, "bf16").kind == "normal"
    assert formats.decode(2**-24, "fp16").kind == "subnormal"
    assert formats.decode(1 + 2**-8, "bf16").value == 1.0  # below bf16's precision
    # e4m3fn has no inf: torch's cast saturates to the max, 448 (e5m2 overflows to inf)
    assert formats.decode(1000.0, "fp8_e4m3").value == 448
    assert formats.decode(1e6, "fp8_e5m2").kind == "inf"


def test_fp4_has_its_eight_magnitudes():
    vals = formats.representable_values("fp4_e2m1", lo=0)
    assert vals.tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert formats.decode(5.2, "fp4_e2m1").value == 6.0
    assert formats.decode(100.0, "fp4_e2m1").value == 6.0  # saturates
    assert formats.round_to(torch.tensor([0.7, -2.6]), "fp4_e2m1").tolist() == [0.5, -3.0]


def test_representable_values_and_spacing():
    vals = formats.representable_values("fp16", 1.0, 2.0)
    assert len(vals) == 2**10 + 1
    assert torch.allclose(vals.diff(), torch.full((1024,), 2.0**-10, dtype=torch.float64))
    assert len(formats.representable_values("fp8_e4m3")) == 253  # 256 - 2 NaN - (+0/-0 merged)
    assert formats.spacing(1.0, "bf16").item() == 2**-7
    assert formats.spacing(1024.0, "fp16").item() == 1.0
    rel = formats.relative_spacing(torch.tensor([1.0, 1.9, 3.0]), "fp32")
    assert ((rel <= 2**-23) & (rel > 2**-24)).all()
    assert formats.round_to(1 + 2**-8, "bf16").item() == 1.0
    assert formats.round_to(1 + 2**-7, "bf16").item() == 1 + 2**-7


def test_bad_input():
    with pytest.raises(LabkitError, match="accepted"):
        formats.get_format("fp12")
    with pytest.raises(LabkitError, match="fit"):
        formats.encode(0, 300, 0, "fp16")
    with pytest.raises(LabkitError, match="16 bits"):
        formats.representable_values("fp32")
    with pytest.raises(LabkitError):
        formats.relative_spacing(0.0, "fp16")
    with pytest.raises(LabkitError):
        formats.decode(math.inf, "fp4_e2m1")


def test_best_loss_scale_lifts_the_small_and_stops_before_overflow():
    """1e-6 is subnormal in fp16 (a few bits) and normal at 2^8; a gradient of 1.0 overflows at
    2^16 (65536 >= 65520 rounds to inf): 2^8 wins; without the large one, 2^16 and 2^8 tie
    (a power of two leaves the mantissa alone) and the first listed wins."""
    small = torch.linspace(1e-6, 3e-6, 101)
    grads = torch.cat([small, torch.tensor([1.0])])
    assert formats.best_loss_scale(grads) == 2.0**8
    assert formats.best_loss_scale(grads, scales=(1.0, 2.0**8)) == 2.0**8
    assert formats.best_loss_scale(grads * 1e-3, scales=(1.0, 2.0**8, 2.0**16)) == 2.0**16
    assert formats.best_loss_scale(small, scales=(2.0**16, 2.0**8)) == 2.0**16
    with pytest.raises(LabkitError, match="every factor"):
        formats.best_loss_scale(grads, scales=(2.0**24,))
    with pytest.raises(LabkitError, match="0 < \\|g\\| < 0.0001"):
        formats.best_loss_scale(torch.ones(4))
    with pytest.raises(LabkitError, match="float tensor"):
        formats.best_loss_scale(torch.ones(4, dtype=torch.int64))
    with pytest.raises(LabkitError, match="small"):
        formats.best_loss_scale(grads, small=-1.0)


def test_largest_linear_grads_reads_the_activation_gradients_between_linears():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(5, 4, requires_grad=True)
    outs, ins = [], []

    def record(_module, inputs, out):
        outs.append(out)
        ins.append(inputs[0])

    for m in (net[0], net[2]):
        m.register_forward_hook(record)
    with formats.largest_linear_grads(net, scale=4.0) as top:
        y = net(x)
        for t in outs + ins:
            t.retain_grad()
        (y**2).sum().backward()
    expected_out = max(t.grad.abs().max().item() for t in outs) / 4
    expected_in = max(t.grad.abs().max().item() for t in ins) / 4
    assert top == pytest.approx({"layer outputs": expected_out, "layer inputs": expected_in})
    assert [len(m._forward_hooks) for m in (net[0], net[2])] == [1, 1]  # its own hooks removed
    with pytest.raises(LabkitError, match="scale"):
        with formats.largest_linear_grads(net, scale=0):
            pass
