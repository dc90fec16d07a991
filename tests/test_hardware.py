import torch

from labkit import hardware


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
