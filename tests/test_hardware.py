import os

import pytest
import torch

from labkit import hardware
from labkit.models import zoo


def test_pick_device_and_threads():
    assert hardware.pick_device().type in {"cuda", "mps", "cpu"}
    assert hardware.set_threads(1) == 1 and torch.get_num_threads() == 1
    hardware.set_threads(2)


def test_requires_cuda_prints_reason_when_skipping(capsys):
    result = hardware.requires_cuda("paged AdamW")
    if not torch.cuda.is_available():
        assert result is False
        assert "SKIPPED" in capsys.readouterr().out
    else:
        assert result is True


def test_env_report_names_versions_and_hardware():
    report = hardware.env_report()
    for name in ("torch", "transformers", "peft", "bitsandbytes", "threads", "bf16"):
        assert name in report
    assert hardware.versions()["transformers"].startswith("5.")


def test_bnb_gpu_usable_explains_itself():
    ok, why = hardware.bnb_gpu_usable()
    assert isinstance(ok, bool) and why


def _fake_gpu(monkeypatch, major, minor):
    """A CUDA device of the given compute capability, without a GPU (torch's own emulation check
    would say yes for any of them: it only tries to create a bf16 tensor)."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))


@pytest.mark.parametrize(
    ("capability", "native"),
    [((7, 0), False), ((7, 5), False), ((8, 0), True), ((8, 9), True), ((9, 0), True)],
)
def test_bf16_native_only_from_compute_capability_8(monkeypatch, capability, native):
    _fake_gpu(monkeypatch, *capability)  # V100, T4, A100, L4/RTX 40xx, H100
    ok, why = hardware.bf16_support("cuda")
    assert ok is native and hardware.bf16_supported("cuda") is native
    assert f"{capability[0]}.{capability[1]}" in why
    if not native:
        assert "emulated" in why


def test_bf16_on_rocm_is_native(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.0")
    assert hardware.bf16_support("cuda") == (True, "ROCm GPU")


X86_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
X86_AMX = "flags\t\t: fpu avx512f amx_tile amx_bf16 amx_int8\n"
X86_OLD = "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
ARM_BF16 = "Features\t: fp asimd sve bf16 i8mm\n"
ARM_OLD = "Features\t: fp asimd evtstrm aes crc32\n"


@pytest.mark.parametrize(
    ("cpuinfo", "flags"),
    [(X86_BF16, ["avx512_bf16"]), (X86_AMX, ["amx_bf16"]), (X86_OLD, []), (ARM_BF16, ["bf16"])]
    + [(ARM_OLD, []), ("", [])],
)
def test_cpu_bf16_flags_read_from_cpuinfo(cpuinfo, flags):
    assert hardware.cpu_bf16_flags(cpuinfo) == flags


def test_bf16_on_cpu_follows_its_flags(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_flags", lambda cpuinfo=None: [])
    ok, why = hardware.bf16_support("cpu")
    assert not ok and "emulated" in why
    monkeypatch.setattr(hardware, "cpu_bf16_flags", lambda cpuinfo=None: ["amx_bf16"])
    assert hardware.bf16_support("cpu") == (True, "CPU flag amx_bf16")
    report = hardware.env_report()
    assert ("bf16 native: yes (CPU flag amx_bf16)" in report) or "cuda" in report


def test_bf16_on_this_cpu_agrees_with_bitsandbytes():
    """bitsandbytes reads the same AVX512-BF16 bit for its CPU kernels (notebook 06 prints it)."""
    import bitsandbytes.functional as bnbf

    if not hasattr(bnbf, "has_avx512bf16") or hardware.pick_device().type != "cpu":
        pytest.skip("needs bitsandbytes' CPU feature probe on a CPU-only machine")
    flags = hardware.cpu_bf16_flags()
    assert bool(bnbf.has_avx512bf16()) == ("avx512_bf16" in flags)


def test_quiet_logs_does_what_notebook_00_says(monkeypatch):
    """00 §1 lists what quieting does: error log level, no progress bars, two env defaults."""
    from transformers.utils import logging as hf_logging

    monkeypatch.delenv("HF_HUB_DISABLE_TELEMETRY", raising=False)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # a learner's own value is kept
    previous, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        hardware.quiet_logs()
        assert hf_logging.get_verbosity() == hf_logging.ERROR
        assert not hf_logging.is_progress_bar_enabled()
        assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    finally:
        hf_logging.set_verbosity(previous)
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()


def test_quiet_logs_hides_peft_checkpointing_read_but_not_the_names_you_type(tmp_path):
    """00 §1: quieting hides the FutureWarning peft 0.21 raises by reading transformers 5's
    deprecated ``is_gradient_checkpointing``; the ``gradient_checkpointing*`` names a learner
    types still print theirs (a log level hides no ``warnings.warn``)."""
    import warnings

    from transformers import TrainingArguments
    from transformers.utils import logging as hf_logging

    model = zoo.load_model("tiny-llama")  # a fresh one: checkpointing is switched on below
    previous, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hardware.quiet_logs()
            assert model.is_gradient_checkpointing is False  # what peft reads: hidden
            model.gradient_checkpointing_enable()  # a name the learner types: shown
            TrainingArguments(str(tmp_path), gradient_checkpointing=True, report_to="none")
    finally:
        hf_logging.set_verbosity(previous)
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
    shown = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert not [m for m in shown if "is_gradient_checkpointing" in m], shown
    assert any(m.startswith("`gradient_checkpointing_enable` is deprecated") for m in shown), shown
    assert any(m.startswith("`gradient_checkpointing` is deprecated") for m in shown), shown
