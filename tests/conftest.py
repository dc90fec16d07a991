"""Shared test setup and fixtures: quiet known-harmless logs, a small thread count, offline hub;
the zoo tokenizer, the tiny random Llama, and tiny configs of families without a formula."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from transformers import AutoConfig, PretrainedConfig  # noqa: E402

from labkit import hardware  # noqa: E402
from labkit.models import zoo  # noqa: E402

hardware.quiet_logs()
# LABKIT_THREADS when set (checked by hardware.set_threads itself), else 2 threads
hardware.set_threads(None if os.environ.get("LABKIT_THREADS") else 2)

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, vocab_size=96)
HEADS = dict(num_attention_heads=4, num_key_value_heads=2)
#: Tiny configs of families without a formula (built here, no file needed): the meta path and
#: the dry run must count them exactly. Import with ``from conftest import TINY_FAMILIES``.
TINY_FAMILIES = {
    "mixtral": dict(**SMALL, **HEADS, num_local_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(**SMALL, **HEADS, head_dim=8, num_experts=4, num_experts_per_tok=2),
    "gemma2": dict(**SMALL, **HEADS, head_dim=8, sliding_window=8),
    "gemma3_text": dict(**SMALL, **HEADS, head_dim=8, sliding_window=8),
    "phi3": dict(**SMALL, **HEADS, pad_token_id=0),
    "qwen3": dict(**SMALL, **HEADS, head_dim=8),
    "gpt_neox": dict(**SMALL, num_attention_heads=4),
}


def tiny_config(model_type: str) -> PretrainedConfig:
    """A tiny config of one of :data:`TINY_FAMILIES`."""
    return AutoConfig.for_model(model_type, **TINY_FAMILIES[model_type])


@pytest.fixture(scope="module")
def tok():
    """The zoo Llama's tokenizer (the ``tiny-*`` models share it); one per test module."""
    return zoo.load_tokenizer("zoo-llama")


@pytest.fixture(scope="session")
def tiny_llama():
    """``(model, tokenizer)``: the random-init ``tiny-llama`` for calls that only need a model."""
    return zoo.load_model("tiny-llama"), zoo.load_tokenizer("tiny-llama")
