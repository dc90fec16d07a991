"""labkit.quant.integer, codebook and layers: worked examples, bit-exactness against bitsandbytes, properties, layers, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from labkit import LabkitError, hardware
from labkit.quant import codebook, integer, layers

hardware.quiet_logs()
import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.functional as bnbf  # noqa: E402

SEED_VECTOR = [1.2, -0.5, -4.3, 1.2, -3.1, 0.8, 2.4, 5.4]


# ---- worked examples (docs/formulas.md) ---------------------------------------------------------------
def test_absmax_worked_example():
    q, scale = integer.absmax_quantize(torch.tensor(SEED_VECTOR))
    assert q.tolist() == [28, -12, -101, 28, -73, 19, 56, 127]
    assert scale.item() == pytest.approx(127 / 5.4)
    assert round(scale.item(), 4) == 23.5185


def test_zeropoint_worked_example():
    q, scale, zp = integer.zeropoint_quantize(torch.tensor(SEED_VECTOR))
    assert q.tolist() == [17, -28, -128, 17, -96, 6, 48, 127]
    assert scale.item() == pytest.approx(255 / 9.7)
    assert zp.item() == -15


# ---- bitsandbytes agreement ----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(64,), (2, 64), (128, 64), (3, 5, 128), (256, 192), (4096,)])
@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_4bit_bit_identical_to_bitsandbytes(shape, kind):
    torch.manual_seed(hash(shape) % 1000)
    x = torch.randn(shape) * 0.02
    x.view(-1)[:64] = 0.0  # an all-zero block
    x.view(-1)[-1] = 3.0  # an outlier
    packed, state = bnbf.quantize_4bit(x, quant_type=kind, blocksize=64, compress_statistics=False)
    fn, inv = (
        (codebook.nf4_quantize, codebook.nf4_dequantize)
        if kind == "nf4"
        else (codebook.fp4_quantize, codebook.fp4_dequantize)
    )
    mine, absmax = fn(x)
    assert mine.dtype == packed.dtype and mine.shape == packed.shape
    assert torch.equal(mine, packed)
    assert torch.equal(absmax, state.absmax)
    # (bitsandbytes' CPU kernel returns 1-D shapes as (1, n): compare values)
    assert torch.equal(inv(mine, absmax, shape), bnbf.dequantize_4bit(packed, state).reshape(shape))


@pytest.mark.parametrize("blocksize", [64, 128, 256])
def test_nf4_blocksizes_and_ties(blocksize):
    # values exactly on the midpoints between NF4 levels: the tie rule must match too
    mids = (codebook.NF4_CODE[:-1] + codebook.NF4_CODE[1:]) / 2
    x = torch.cat([mids, -mids, torch.linspace(-1, 1, 2 * blocksize - 30)])
    x = x[: (x.numel() // blocksize) * blocksize]
    x[0] = 1.0  # absmax 1 keeps the midpoints exact in the first block
    packed, state = bnbf.quantize_4bit(
        x, quant_type="nf4", blocksize=blocksize, compress_statistics=False
    )
    mine, absmax = codebook.nf4_quantize(x, blocksize)
    assert torch.equal(mine, packed) and torch.equal(absmax, state.absmax)


def test_nf4_table_derived_from_the_normal():
    assert torch.equal(codebook.NF4_CODE, bnbf.get_4bit_type("nf4", device="cpu"))
    assert torch.allclose(codebook.nf4_code_from_normal(), codebook.NF4_CODE, atol=1e-7)
    assert torch.equal(codebook.FP4_CODE, bnbf.get_4bit_type("fp4", device="cpu"))


def test_int8_vectorwise_matches_bitsandbytes():
    torch.manual_seed(0)
    x = torch.randn(16, 96)
    q, row_stats, _ = bnbf.int8_vectorwise_quant(x.clone())
    mine, scale = integer.absmax_quantize(x, 8, axis=-1)
    assert torch.equal(mine, q)
    assert torch.allclose(127 / scale.squeeze(1), row_stats)


def test_double_quantization_costs_and_accuracy():
    assert codebook.bits_per_parameter(4, 64) == 4.5
    assert round(codebook.bits_per_parameter(4, 64, double_quant=True), 3) == 4.127
    torch.manual_seed(0)
    x = torch.randn(256 * 64 * 3)
    _, absmax = codebook.nf4_quantize(x)
    q, scale, offset = codebook.double_quantize(absmax)
    assert q.dtype == torch.int8 and q.numel() == absmax.numel() and scale.numel() == 3
    back = codebook.double_dequantize(q, scale, offset)
    step = 1 / scale.repeat_interleave(256)
    assert ((back - absmax).abs() <= step / 2 + 1e-6).all()
    # bitsandbytes' nested state: same number of 8-bit constants and 256-blocks
    _, state = bnbf.quantize_4bit(x, quant_type="nf4", blocksize=64, compress_statistics=True)
    assert state.absmax.dtype == torch.uint8 and state.absmax.numel() == q.numel()
    assert state.state2.absmax.numel() == scale.numel()


def test_quantile_and_int4_error_ordering():
    torch.manual_seed(0)
    w = torch.randn(128, 256) * 0.05
    err = {
        k: integer.quant_error(w, codebook.fake_quantize_4bit(w, k))["mse"]
        for k in ("int4", "fp4", "nf4", "quantile")
    }
    # normal weights: NF4 beats uniform levels, FP4, and empirical quantiles (whose few outer
    # levels leave the largest weights with large errors)
    assert err["nf4"] < min(err["int4"], err["fp4"], err["quantile"])
    code = codebook.quantile_code(w, 4, blocksize=64)
    assert code.numel() == 16 and (code.diff() > 0).all() and code[0] == -1 and code[-1] == 1
    # the defining property: on the data it was fitted to, the inner levels split it evenly
    flat = (w / w.abs().max()).flatten()
    inner = codebook.quantile_code(w, 4)[1:-1]
    below = torch.tensor([(flat < c).float().mean() for c in inner])
    assert torch.allclose(below.diff(), torch.full((13,), 1 / 17), atol=0.01)


def test_equal_count_is_symmetric_and_splits_evenly_while_quantile_is_lopsided():
    torch.manual_seed(0)
    w = torch.randn(256, 256)
    eq = codebook.equal_count_code(w, 4, blocksize=64)
    q = codebook.quantile_code(w, 4, blocksize=64)
    assert eq.numel() == 16 and (eq.diff() > 0).all()
    assert torch.allclose(eq, -eq.flip(0), atol=0.02)  # normal data: mirror image
    # each level is the median of its 1/16 share: 1/16 of the data between consecutive levels
    blocks = w.reshape(-1, 64)
    flat = (blocks / blocks.abs().amax(1, keepdim=True)).flatten()
    below = torch.tensor([(flat < c).float().mean() for c in eq])
    assert torch.allclose(below, (torch.arange(16) + 0.5) / 16, atol=0.005)
    # QLoRA's estimator: the top level before pinning is the mean of Q(15/17) and Q(16/17),
    # well inside (0.3, 0.5) on block-scaled normal data, so +1 sits far from level 14
    assert 0.3 < q[-2] < 0.5 and -q[1] > q[-2] + 0.05
    err = {
        k: integer.quant_error(w, codebook.fake_quantize_4bit(w, k)) for k in ("nf4", "equal-count")
    }
    assert err["nf4"]["mse"] < err["equal-count"]["mse"]


def test_int4_and_fp4_have_15_distinct_levels():
    assert torch.unique(codebook.INT4_CODE).numel() == 15
    assert codebook.FP4_CODE.numel() == 16 and torch.unique(codebook.FP4_CODE).numel() == 15
    assert torch.unique(codebook.NF4_CODE).numel() == 16


# ---- properties (hypothesis) --------------------------------------------------------------------
floats = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(floats, min_size=1, max_size=64), st.integers(2, 8))
def test_absmax_round_trip_within_half_step(values, bits):
    x = torch.tensor(values, dtype=torch.float32)
    q, scale = integer.absmax_quantize(x, bits)
    lo, hi = integer.qrange(bits)
    assert q.min() >= lo and q.max() <= hi
    err = (integer.absmax_dequantize(q, scale) - x).abs()
    step = 1 / scale
    assert (err <= step / 2 * (1 + 1e-5) + 1e-6 * x.abs()).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(floats, min_size=1, max_size=64), st.integers(2, 8))
def test_zeropoint_round_trip_within_half_step(values, bits):
    x = torch.tensor(values, dtype=torch.float32)
    q, scale, zp = integer.zeropoint_quantize(x, bits)
    assert q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1
    err = (integer.zeropoint_dequantize(q, scale, zp) - x).abs()
    assert (err <= (1 / scale) / 2 * (1 + 1e-4) + 1e-5 * x.abs().max()).all()


@st.composite
def grouped_tensor(draw):
    rows = draw(st.integers(1, 6))
    n_groups = draw(st.integers(1, 4))
    g = draw(st.sampled_from([1, 2, 4, 8, 16]))
    vals = draw(st.lists(floats, min_size=rows * n_groups * g, max_size=rows * n_groups * g))
    return torch.tensor(vals, dtype=torch.float32).reshape(rows, n_groups * g), g


@settings(max_examples=60, deadline=None)
@given(grouped_tensor(), st.sampled_from([0, 1]))
def test_granularity_functions(xg, axis):
    x, g = xg
    # group-wise along the last axis: one absmax per group of g consecutive values in a row
    am = integer.group_reduce(x, "absmax", axis=-1, group_size=g)
    assert am.shape == (x.shape[0], x.shape[1] // g)
    assert torch.equal(am, x.reshape(x.shape[0], -1, g).abs().amax(-1))
    assert integer.expand_groups(am, x.shape).shape == x.shape
    assert (integer.expand_groups(am, x.shape) >= x.abs()).all()
    # per-channel = one group spanning the axis; per-tensor = one value
    ch = integer.group_reduce(x, "absmax", axis=axis)
    assert torch.equal(ch, x.abs().amax(axis, keepdim=True))
    assert integer.group_reduce(x, "absmax").item() == x.abs().max().item()
    # finer groups never err more than per-tensor on the worst element (same scale or smaller)
    q, s = integer.absmax_quantize(x, 8, axis=-1, group_size=g)
    err = (integer.absmax_dequantize(q, s) - x).abs()
    assert (err <= integer.expand_groups(1 / s, x.shape) / 2 * (1 + 1e-5) + 1e-6 * x.abs()).all()


# ---- matmuls and layers -----------------------------------------------------------------------
def test_int8_matmul_equals_int32_accumulation():
    torch.manual_seed(0)
    a = torch.randint(-127, 128, (5, 300), dtype=torch.int8)
    b = torch.randint(-127, 128, (7, 300), dtype=torch.int8)
    out = integer.int8_matmul(a, b)
    assert out.dtype == torch.int32
    assert torch.equal(out, a.to(torch.int32) @ b.to(torch.int32).T)
    with pytest.raises(LabkitError):
        integer.int8_matmul(a.float(), b)


def test_vectorwise_int8_matmul_close_to_float():
    torch.manual_seed(0)
    x, w = torch.randn(8, 64), torch.randn(32, 64) * 0.1
    y = integer.int8_linear_vectorwise(x, w)
    ref = x @ w.T
    assert (y - ref).abs().max() < 0.05 * ref.abs().max()


def test_llm_int8_decomposition_recovers_outliers_and_matches_bnb():
    torch.manual_seed(0)
    x, w = torch.randn(16, 64), torch.randn(48, 64) * 0.1
    x[:, [3, 40]] *= 40  # two outlier feature columns
    ref = x @ w.T
    plain = (integer.int8_linear_vectorwise(x, w) - ref).abs().mean()
    mixed = (integer.llm_int8_linear(x, w, 6.0) - ref).abs().mean()
    assert mixed < plain / 5
    assert integer.outlier_columns(x, 6.0).tolist() == [3, 40]
    layer = bnb.nn.Linear8bitLt(64, 48, bias=False, has_fp16_weights=False, threshold=6.0)
    layer.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
    layer = layer.to("cpu").eval()
    with torch.no_grad():
        theirs = layer(x)
    assert (
        theirs.float() - integer.llm_int8_linear(x, w, 6.0)
    ).abs().max() < 1e-2 * ref.abs().max()


def _toy_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))


@pytest.mark.parametrize("kind", ["w8a16", "nf4", "w8a8"])
def test_quantize_model_replaces_every_linear(kind):
    model, x = _toy_model(), torch.randn(5, 32)
    ref = model(x)
    names = layers.quantize_model(model, kind, skip=())
    assert names == ["0", "2"]
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    tol = {"w8a16": 0.02, "w8a8": 0.03, "nf4": 0.2}[kind]
    assert (model(x) - ref).abs().max() < tol * ref.abs().max()


def test_w8a16_dequantizes_to_input_dtype():
    layer = layers.W8A16Linear(nn.Linear(16, 8))
    assert layer.qweight.dtype == torch.int8
    assert layer(torch.randn(2, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_smoothquant_is_exact_before_rounding_and_helps_with_outliers():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(4, 10, 64)
    x[..., 5] *= 50  # an outlier channel, as in LLM activations
    stats = layers.collect_input_absmax(nn.Sequential(lin), [{"input": x}], names=["0"])
    assert torch.allclose(stats["0"], x.abs().amax((0, 1)))
    s = layers.smoothquant_scales(stats["0"], lin.weight, 0.5)
    ref = lin(x)
    smoothed = (x / s) @ (lin.weight * s).T + lin.bias
    assert torch.allclose(smoothed, ref, atol=1e-4)
    plain = (layers.W8A8Linear(lin)(x) - ref).abs().mean()
    smooth = (layers.W8A8Linear(lin, s)(x) - ref).abs().mean()
    assert smooth < plain / 2


class _Padded(nn.Module):
    """A linear over ``[batch, tokens, channels]`` and a pooler over the first token only."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.pool = nn.Linear(4, 4)

    def forward(self, input, attention_mask=None):
        return self.pool(self.fc(input)[:, 0]) + self.fc(input).sum()


def test_collect_input_absmax_can_leave_padding_out():
    x = torch.ones(2, 3, 4)
    x[1, 2] = 100.0  # a padding position with a large value
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    batch = {"input": x, "attention_mask": mask}
    model = _Padded()
    every = layers.collect_input_absmax(model, [batch], names=["fc"])
    real = layers.collect_input_absmax(model, [batch], names=["fc", "pool"], mask_padding=True)
    assert torch.equal(every["fc"], torch.full((4,), 100.0))  # the default: padding counts
    assert torch.equal(real["fc"], torch.ones(4))  # fails if the pad position is counted
    # the pooler's input [batch, channels] is not shaped like the mask: every row counts
    assert torch.equal(real["pool"], model.fc(x)[:, 0].abs().amax(0).detach())
    with pytest.raises(LabkitError, match="attention_mask"):
        layers.collect_input_absmax(model, [{"input": x}], mask_padding=True)


def test_smoothquant_on_model_needs_stats():
    model = _toy_model()
    with pytest.raises(LabkitError, match="act_absmax"):
        layers.quantize_model(model, "smoothquant")
    x = torch.randn(6, 32)
    stats = layers.collect_input_absmax(model, [{"input": x}], names=["0", "2"])
    ref = model(x)
    layers.quantize_model(model, "smoothquant", skip=(), act_absmax=stats, alpha=0.5)
    assert (model(x) - ref).abs().max() < 0.05 * ref.abs().max()


class _Logits(nn.Module):
    """A stand-in causal LM: logits = a fixed table indexed by token id, plus ``bump`` on pads."""

    def __init__(self, bump=0.0):
        super().__init__()
        self.table = torch.arange(12.0).reshape(4, 3)
        self.bump = bump

    def forward(self, input_ids, attention_mask=None):
        logits = self.table[input_ids].clone()
        if attention_mask is not None:
            logits[attention_mask == 0] += self.bump
        return type("Out", (), {"logits": logits})()


def test_logit_difference_counts_real_tokens_only():
    ids = torch.tensor([[1, 2, 0, 0], [3, 1, 2, 0]])
    mask = (ids != 0).long()
    d = layers.logit_difference(_Logits(), _Logits(bump=5.0), ids, mask)
    assert d == {"max_abs": 0.0, "mean_abs": 0.0, "top1_agreement": 1.0}
    # without the mask the pad rows count (no mask reaches the models either: nothing differs)
    assert layers.logit_difference(_Logits(), _Logits(bump=5.0), ids)["max_abs"] == 0.0
    with pytest.raises(LabkitError, match="attention_mask"):
        layers.logit_difference(_Logits(), _Logits(), ids, mask[:, :2])


def test_story_logit_differences_one_value_per_story_real_tokens_only():
    ids = torch.tensor([[1, 2, 0, 0], [3, 1, 2, 0]])
    mask = (ids != 0).long()
    batches = [{"input_ids": ids, "attention_mask": mask}]
    d = layers.story_logit_differences(_Logits(), _Logits(bump=5.0), batches)
    assert d.tolist() == [0.0, 0.0]  # the pads differ, the real tokens do not
    # a model off by 2 on token 1 only: story 0 has 1 of its 2 real tokens there, story 1 1 of 3
    far = _Logits()
    far.table[1] += 2.0
    d = layers.story_logit_differences(_Logits(), far, batches * 2)
    assert torch.allclose(d, torch.tensor([1.0, 2 / 3, 1.0, 2 / 3]))
    pooled = layers.logit_difference(_Logits(), far, ids, mask)["mean_abs"]
    assert abs(pooled - 4 / 5) < 1e-6  # 2 of 5 real tokens off by 2: it weights tokens, not stories
    with pytest.raises(LabkitError, match="attention_mask"):
        layers.story_logit_differences(_Logits(), far, [{"input_ids": ids}])
    with pytest.raises(LabkitError, match="no batches"):
        layers.story_logit_differences(_Logits(), far, [])


class _PostLN(nn.Module):
    """BERT's pattern: the LayerNorm's output feeds a linear AND the residual."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 16)

    def forward(self, input):
        h = self.norm(input)
        return h + self.fc(h)


def test_norm_fed_linears_and_foldability_on_a_pre_ln_llama(tiny_llama):
    model, tok = tiny_llama
    batch = dict(tok(["the fox lives in the forest"], return_tensors="pt"))
    feeds = layers.norm_fed_linears(model, batch)
    kinds = {n.split(".")[-1] for n in feeds}
    assert kinds == {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}  # lm_head skipped
    n_layers = model.config.num_hidden_layers
    assert len(feeds) == 5 * n_layers
    assert layers.smoothquant_foldable(model, batch) == feeds  # pre-LN: nothing else reads them
    import copy

    folded = copy.deepcopy(model)
    stats = layers.collect_input_absmax(model, [batch])
    smoothed = layers.fold_smoothquant(folded, stats, feeds, alpha=0.5)
    assert sorted(smoothed) == sorted(feeds)
    with torch.no_grad():
        ref, out = model(**batch).logits, folded(**batch).logits
    assert (out - ref).abs().max() < 1e-4 * ref.abs().max()
    assert not torch.equal(
        folded.model.layers[0].input_layernorm.weight, model.model.layers[0].input_layernorm.weight
    )


def test_post_ln_norm_feeds_a_linear_but_cannot_be_folded():
    model = _PostLN().eval()
    batch = {"input": torch.randn(3, 5, 16) * 4}
    assert layers.norm_fed_linears(model, batch) == {"fc": "norm"}
    assert layers.smoothquant_foldable(model, batch) == {}
    before = [p.clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_quantize_model_smooth_only_smooths_the_named_linears():
    model = _toy_model()
    x = torch.randn(6, 32)
    stats = layers.collect_input_absmax(model, [{"input": x}], names=["0", "2"])
    layers.quantize_model(model, "smoothquant", skip=(), act_absmax=stats, smooth_only=["2"])
    assert model[0].inv_smooth is None and model[2].inv_smooth is not None


def test_error_metrics():
    x = torch.tensor([1.0, -2.0, 3.0, 4.0])
    e = integer.quant_error(x, x + torch.tensor([0.1, -0.1, 0.1, -0.1]))
    assert e["mse"] == pytest.approx(0.01, rel=1e-5)
    assert e["max_error"] == pytest.approx(0.1)
    assert e["sqnr_db"] == pytest.approx(10 * math.log10(30 / 0.04))
    assert integer.quant_error(x, x)["sqnr_db"] == math.inf
    assert codebook.bits_per_parameter(8, None) == 8.0


# ---- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda: integer.absmax_quantize(torch.randn(8), bits=1),
        lambda: integer.absmax_quantize(torch.randn(8), bits=9),
        lambda: integer.zeropoint_quantize(torch.randn(8), bits=16),
        lambda: integer.absmax_quantize(torch.randn(4, 10), axis=-1, group_size=3),
        lambda: integer.absmax_quantize(torch.randn(4, 10), group_size=5),
        lambda: integer.absmax_quantize(torch.empty(0)),
        lambda: integer.absmax_quantize(torch.tensor([1.0, math.nan])),
        lambda: integer.zeropoint_quantize(torch.tensor([1.0, math.inf])),
        lambda: codebook.nf4_quantize(torch.randn(100)),
        lambda: codebook.nf4_quantize(torch.tensor([math.nan] * 64)),
        lambda: codebook.nf4_dequantize(
            torch.zeros(32, 1, dtype=torch.uint8), torch.ones(1), (128,)
        ),
        lambda: integer.absmax_quantize(torch.arange(8)),
        lambda: codebook.fake_quantize_4bit(torch.randn(64), "int3"),
        lambda: layers.smoothquant_scales(torch.ones(4), torch.ones(2, 4), alpha=1.5),
        lambda: layers.quantize_model(nn.Linear(2, 2), "w4a4"),
    ],
)
def test_bad_input_raises_clear_error(call):
    with pytest.raises(LabkitError) as info:
        call()
    assert "\n" not in str(info.value)
