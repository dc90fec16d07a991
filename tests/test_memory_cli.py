"""The ``estimate`` command: JSON keys, table, and one-line errors with exit status 2."""

import json
import subprocess
import sys

import pytest

from labkit import REPO_ROOT, LabkitError, cli
from labkit.fit import estimate_cli
from labkit.memory import calculator, estimator
from labkit.memory.job import TrainingJob
from labkit.models import architecture


def run(capsys, *argv):
    rc = cli.main(["estimate", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_keys_and_values(capsys):
    rc, out, err = run(
        capsys, "tiny-llama", "--batch", "2", "--seq", "16", "--precision", "fp32", "--json"
    )
    assert rc == 0 and not err
    data = json.loads(out)
    assert set(estimate_cli.JSON_KEYS) <= set(data)
    est = estimator.training_memory("tiny-llama", precision="fp32", batch=2, seq=16)
    assert data["parameters"] == architecture.count_parameters("tiny-llama")
    assert data["activations"] == est.activations and data["logits"] == est.logits
    assert data["total"] == est.total and data["gpus_needed"] == 1


def test_config_path_infer_and_sharding(capsys):
    path = REPO_ROOT / "data" / "configs" / "llama-3.1-8b" / "config.json"
    rc, out, _ = run(capsys, str(path), "--mode", "infer", "--seq", "8192", "--json")
    assert rc == 0 and json.loads(out)["kv_cache"] == 2**30
    rc, out, _ = run(capsys, "llama-2-7b", "--gpus", "8", "--zero", "3", "--json")
    z3 = json.loads(out)
    rc, out, _ = run(capsys, "llama-2-7b", "--json")
    assert z3["total"] < json.loads(out)["total"]


def test_card_adds_the_roofline_decode_prediction(capsys):
    from labkit.inference import roofline

    argv = ("llama-2-7b", "--mode", "infer", "--seq", "2048", "--batch", "4", "--card", "h100-sxm")
    rc, out, _ = run(capsys, *argv, "--json")
    data = json.loads(out)
    want = roofline.predict("llama-2-7b", "h100-sxm", dtype="bf16", batch=4, context=2048)
    assert rc == 0 and data["card"] == "H100 SXM"
    assert data["decode_tokens_per_s"] == want["decode_tokens_per_s"]
    rc, out, _ = run(capsys, *argv)
    line = roofline.prediction_line(want, batch=4, context=2048)
    row = next(r for r in out.splitlines() if "predicted decode (roofline)" in r)
    assert rc == 0 and row.endswith(line)
    assert "ZeRO-3" not in out  # a training notion: not in the serving table
    rc, out, _ = run(capsys, "llama-2-7b", "--mode", "infer", "--json")
    assert "card" not in json.loads(out)


def test_table_shows_rule_of_thumb(capsys):
    rc, out, _ = run(capsys, "qwen2.5-0.5b", "--method", "lora", "--checkpointing")
    assert rc == 0 and "rule of thumb" in out and "GPUs needed" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["no-such-model"],
        ["/no/such/config.json"],
        ["tiny-llama", "--batch", "0"],
        ["tiny-llama", "--seq", "-3"],
        ["tiny-llama", "--optimizer", "lion"],
        ["tiny-llama", "--bogus"],
        [],
        ["tiny-bloom", "--attention", "sdpa"],
        ["tiny-llama", "--card", "h100-sxm"],
        ["tiny-llama", "--mode", "infer", "--card", "tpu"],
        ["tiny-llama", "--fit", "1", "--gpus", "2", "--zero", "2"],
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and not out
    assert len(err.strip().splitlines()) == 1


def test_heads_not_dividing_hidden(capsys, tmp_path):
    cfg = json.loads((REPO_ROOT / "data/models/tiny-llama/config.json").read_text())
    cfg.update(num_attention_heads=5, num_key_value_heads=5, head_dim=None)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    rc, _, err = run(capsys, str(path))
    assert rc == 2 and "divide" in err and len(err.strip().splitlines()) == 1


def test_module_entry_point_exit_status():
    proc = subprocess.run(
        [sys.executable, "-m", "labkit", "estimate", "tiny-llama", "--batch", "x"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_infer_with_a_card_prints_no_deprecation_line():
    """The command README and notebook 17 advertise: its prefill dry run reads the KV cache by
    transformers 5.24's name (`cache`), so no "`past_key_values`/`cache_params` are deprecated"
    line reaches the terminal (it did while the old name was read as a fallback)."""
    argv = ["estimate", "llama-3.1-8b", "--mode", "infer", "--card", "h100-sxm"]
    proc = subprocess.run(
        [sys.executable, "-m", "labkit", *argv],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "H100 SXM" in proc.stdout
    noise = [line for line in proc.stderr.splitlines() if "deprecated" in line.lower()]
    assert not noise, noise


def test_lora_defaults_to_a_bf16_base_and_names_its_regime(capsys):
    """Practice loads LoRA's frozen base in 16 bit; the fp32-base figure stays behind a flag."""
    rc, out, _ = run(capsys, "llama-2-7b", "--method", "lora", "--json")
    data = json.loads(out)
    assert rc == 0 and data["regime"] == "LoRA: bf16 base + fp32 adapters, bf16 autocast"
    n = data["trainable_parameters"]
    # no fp32 copy of the base: bf16 base + fp32 adapters + autocast's bf16 copies of them
    assert data["weights"] == estimator.weight_bytes("llama-2-7b", "bf16") + (4 + 2) * n
    bf16 = estimator.training_memory("llama-2-7b", method="lora", base_dtype="bf16")
    assert data["total"] == bf16.total
    rc, out, _ = run(capsys, "llama-2-7b", "--method", "lora", "--base-dtype", "fp32", "--json")
    fp32 = json.loads(out)
    assert fp32["regime"] == "LoRA: fp32 base + fp32 adapters, bf16 autocast"
    base32 = estimator.training_memory("llama-2-7b", method="lora", base_dtype="fp32")
    assert fp32["total"] == base32.total
    assert fp32["weights"] > 2.5 * data["weights"]
    rc, out, _ = run(capsys, "llama-2-7b", "--method", "qlora", "--json")
    assert (
        json.loads(out)["regime"]
        == "QLoRA: NF4 base (double quantization) + fp32 adapters, bf16 autocast"
    )
    rc, out, _ = run(capsys, "llama-2-7b", "--precision", "bf16")
    assert "total per GPU (pure bf16)" in out and "2+2+12 = 16 B/param" in out
    rc, out, _ = run(capsys, "llama-2-7b", "--json")
    assert json.loads(out)["regime"] == "bf16 autocast with fp32 master weights"
    rc, out, err = run(capsys, "llama-2-7b", "--base-dtype", "bf16")
    assert rc == 2 and "--method lora" in err


@pytest.mark.parametrize(
    ("precision", "base"),
    [("bf16-mixed", "bf16"), ("bf16", "bf16"), ("fp16-mixed", "fp16"), ("fp32", "fp32")],
)
def test_one_default_for_loras_base_everywhere(capsys, precision, base):
    """The command, the notebook's calculator and training_memory put LoRA's base in the compute
    dtype unless told: one default (TrainingJob), not one per front end."""
    job = TrainingJob(method="lora", precision=precision)
    assert job.weight_dtype == base
    rc, out, _ = run(capsys, "llama-2-7b", "--method", "lora", "--precision", precision, "--json")
    data = json.loads(out)
    api = estimator.training_memory("llama-2-7b", method="lora", precision=precision)
    assert rc == 0 and data["total"] == api.total and data["regime"] == api.details["regime"]
    assert f"LoRA: {base} base" in data["regime"]
    explicit = estimator.training_memory("llama-2-7b", job, base_dtype=base)
    assert explicit.total == api.total
    if precision in calculator.REGIMES:
        per, _ = calculator.calculate(
            model="llama-2-7b",
            method="lora",
            precision=precision,
            batch=1,
            seq=512,
            checkpointing=False,
        )
        assert per.total == api.total and per.details["regime"] == api.details["regime"]


@pytest.mark.parametrize(
    ("argv", "flags", "parameters"),
    [
        (
            ["--method", "qlora", "--precision", "fp32"],
            "--method qlora needs a 16-bit --precision",
            "method='qlora' needs a 16-bit precision",
        ),
        (
            ["--frozen-layers", "2"],
            "--frozen-layers needs --method frozen",
            "frozen_layers needs method='frozen'",
        ),
        (
            ["--method", "frozen", "--frozen-layers", "40"],
            "--frozen-layers must be between 0 and 32",
            "frozen_layers must be between 0 and 32",
        ),
        (
            ["--method", "lora", "--precision", "fp32", "--base-dtype", "bf16"],
            "--base-dtype bf16 needs a 16-bit --precision",
            "base_dtype='bf16' needs a 16-bit precision",
        ),
    ],
)
def test_errors_name_parameters_in_the_api_and_flags_on_the_command_line(
    capsys, argv, flags, parameters
):
    rc, _, err = run(capsys, "llama-2-7b", *argv)
    assert rc == 2 and flags in err and "_" not in err.split(":", 1)[1]
    options = {"method": "full", "precision": "bf16-mixed", "frozen_layers": 0}
    pairs = dict(zip(argv[::2], argv[1::2], strict=True))
    for name, value in pairs.items():
        key = name.removeprefix("--").replace("-", "_")
        options[key] = int(value) if value.isdigit() else value
    with pytest.raises(LabkitError) as api_err:
        estimator.training_memory("llama-2-7b", **options)
    assert parameters in str(api_err.value) and "--" not in str(api_err.value)


def test_ddp_verdict_reads_the_peak_with_the_gradient_buckets(capsys):
    """Over several GPUs with DDP (--zero 0) the verdict reads the one-GPU peak plus DDP's gradient
    buckets (held to a 2-rank trace in tests/test_peak.py); under ZeRO the per-GPU total."""
    common = ("zoo-llama", "--precision", "fp32", "--device", "cpu", "--batch", "4", "--seq", "128")
    one = json.loads(run(capsys, *common, "--json")[1])
    ddp = json.loads(run(capsys, *common, "--gpus", "2", "--json")[1])
    assert one["ddp_buckets"] is None and ddp["ddp_buckets"] == one["gradients"] > 0
    assert ddp["peak"] == one["peak"] + one["gradients"]
    assert ddp["peak_phase"] == one["peak_phase"]
    zero = json.loads(run(capsys, *common, "--gpus", "2", "--zero", "2", "--json")[1])
    assert zero["peak"] is None
    rc, out, _ = run(capsys, *common, "--gpus", "2")
    assert rc == 0 and "DDP gradient buckets (in the peak)" in out
    # --fit under DDP leaves room for the buckets: never a larger batch than on one GPU
    fit = ("--fit", "0.07", "--json")
    assert (
        json.loads(run(capsys, *common, "--gpus", "2", *fit)[1])["max_batch"]
        < (json.loads(run(capsys, *common, *fit)[1])["max_batch"])
    )
