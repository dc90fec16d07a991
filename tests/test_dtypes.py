"""labkit.dtypes against the libraries: bytes per dtype are torch's, ``quantized_bytes`` is what
bitsandbytes itself stores for an NF4 tensor (``quantize_4bit`` on CPU, with and without double
quantization), and the estimator's NF4 weights are what a real 4-bit model holds."""

import pytest
import torch
from transformers import BitsAndBytesConfig

from labkit import LabkitError, hardware
from labkit.dtypes import DTYPE_BYTES, DTYPE_NAMES, quantized_bytes
from labkit.memory import estimator, measure
from labkit.models import zoo

hardware.quiet_logs()
import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.functional as bnbf  # noqa: E402

#: What bitsandbytes stores once per quantized tensor, whatever its size, and the formula (bits
#: per weight) leaves out: the 16-entry NF4 code (fp32); with double quantization also the
#: 256-entry 8-bit code of the block constants (fp32) and their fp32 mean (``offset``).
NF4_CODE_BYTES = 16 * 4
DQ_TABLE_BYTES = 256 * 4 + 4
TORCH_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8"}


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _state_tensors(state) -> list[torch.Tensor]:
    """Every tensor of a bitsandbytes quant state, the nested one (double quantization) included."""
    states = [state] + ([state.state2] if state.nested else [])
    return [v for s in states for v in vars(s).values() if isinstance(v, torch.Tensor)]


def test_dtype_bytes_are_torch_element_sizes():
    for name, size in DTYPE_BYTES.items():
        short = DTYPE_NAMES[name]
        dtype = getattr(torch, TORCH_NAMES[short])
        assert size == torch.empty(0, dtype=dtype).element_size() == DTYPE_BYTES[short], name


# 64 x 256 values: whole blocks and one whole nested block; 300 and 769 blocks: a partial nested
# block; 3,700 values: a partial block of 64 as well; 4096 x 1024: a real layer's size
@pytest.mark.parametrize("numel", [64 * 256, 64 * 300, 64 * 769, 3_700, 4096 * 1024])
@pytest.mark.parametrize("double_quant", [True, False], ids=["double-quant", "fp32-absmax"])
def test_quantized_bytes_are_what_bitsandbytes_stores(numel, double_quant):
    x = torch.randn(numel, generator=torch.Generator().manual_seed(0))
    packed, state = bnbf.quantize_4bit(
        x, blocksize=64, quant_type="nf4", compress_statistics=double_quant
    )
    assert state.nested == double_quant
    codes_and_constants = _nbytes(packed) + _nbytes(state.absmax)
    if double_quant:  # 8-bit absmax per block of 64, one fp32 scale per 256 of them
        assert state.absmax.dtype == torch.uint8 and state.state2.blocksize == 256
        codes_and_constants += _nbytes(state.state2.absmax)
    assert codes_and_constants == quantized_bytes(numel, 4, 64, double_quant=double_quant)
    # and nothing else is stored but the per-tensor tables the formula leaves out
    tables = NF4_CODE_BYTES + (DQ_TABLE_BYTES if double_quant else 0)
    assert _nbytes(packed) + sum(map(_nbytes, _state_tensors(state))) == (
        codes_and_constants + tables
    )


@pytest.mark.parametrize("double_quant", [True, False], ids=["double-quant", "fp32-absmax"])
def test_nf4_weight_bytes_equal_a_real_4bit_model(double_quant):
    """zoo-llama loaded in 4 bits by bitsandbytes on the CPU (tensors it leaves unquantized in bf16,
    as the estimator assumes), measured by ``measure.state_bytes`` (weights and every quant-state
    tensor) right after loading: no forward pass, so the AVX512-BF16 repacking that pitfalls.md
    describes cannot happen. Equal to the estimate once the per-tensor tables are set aside."""
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = zoo.load_model("zoo-llama", quantization_config=quant, dtype=torch.bfloat16)
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 4 * 7  # every block linear, not the output head
    measured = measure.state_bytes(model).weights
    tables = len(linears) * (NF4_CODE_BYTES + (DQ_TABLE_BYTES if double_quant else 0))
    config = zoo.load_config("zoo-llama")
    assert estimator.weight_bytes(config, "nf4", double_quant=double_quant) == measured - tables


@pytest.mark.parametrize(
    ("numel", "match"),
    [(-1, "got -1"), (2.5, "got 2.5"), (True, "got True"), ("64", "got '64'")],
)
def test_quantized_bytes_refuses_a_bad_count_in_one_line(numel, match):
    with pytest.raises(LabkitError, match=match) as err:
        quantized_bytes(numel)
    assert "\n" not in str(err.value) and "integer >= 0" in str(err.value)


@pytest.mark.parametrize("field", ["bits", "blocksize", "dq_blocksize", "absmax_bits"])
def test_quantized_bytes_refuses_non_positive_sizes(field):
    with pytest.raises(LabkitError, match=f"{field} must be a positive integer"):
        quantized_bytes(4096, **{field: 0})
