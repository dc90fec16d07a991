"""labkit.fit.search: the largest micro-batch and the longest sequence whose predicted peak fits a
card, checked against the peak on both sides of the answer."""

import pytest

from labkit import LabkitError
from labkit.fit import search
from labkit.memory import peak

JOB = dict(method="lora", precision="bf16-mixed", base_dtype="bf16")


def test_max_batch_and_max_seq_are_the_edges():
    b = search.max_batch("llama-3.1-8b", 24, seq=512, **JOB)
    assert b is not None and b >= 1
    assert peak.training_peak("llama-3.1-8b", batch=b, seq=512, **JOB).peak <= 24 * 2**30
    assert peak.training_peak("llama-3.1-8b", batch=b + 1, seq=512, **JOB).peak > 24 * 2**30
    s = search.max_seq("llama-3.1-8b", 24, batch=1, **JOB)
    assert peak.training_peak("llama-3.1-8b", batch=1, seq=s, **JOB).peak <= 24 * 2**30
    assert peak.training_peak("llama-3.1-8b", batch=1, seq=s + 1, **JOB).peak > 24 * 2**30
    assert search.fit("llama-3.1-8b", 24, batch=1, seq=512, **JOB) == {
        "max_batch": b,
        "max_seq": s,
    }


def test_none_when_nothing_fits_and_the_position_limit():
    assert search.max_batch("llama-3.1-8b", 8, seq=512, **JOB) is None  # 16 GB of weights
    assert search.max_seq("llama-3.1-8b", 8, **JOB) is None
    assert search.max_seq("gpt2", 80, precision="fp32") == 1024  # GPT-2's learned positions
    room = search.max_batch("gpt2", 8, seq=1024, precision="fp32")
    assert search.max_batch("gpt2", 8, seq=1024, precision="fp32", reserve=2**30) < room


@pytest.mark.parametrize(("gib", "reserve"), [(0, 0), (-1, 0), ("24", 0), (24, -5)])
def test_bad_sizes_are_one_line(gib, reserve):
    with pytest.raises(LabkitError, match="GiB|reserve"):
        search.max_batch("gpt2", gib, reserve=reserve)


def run(capsys, *argv):
    from labkit import cli

    rc = cli.main(["estimate", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_estimate_prints_the_peak_and_fits(capsys):
    """``estimate --json`` gains the peak, its phase and the per-phase figures; ``--fit GIB``
    the largest batch and the longest sequence; the table prints the peak first."""
    import json

    argv = ["tiny-llama", "--precision", "fp32", "--batch", "2", "--seq", "64", "--device", "cpu"]
    rc, out, _ = run(capsys, *argv, "--json", "--fit", "0.01")
    data = json.loads(out)
    want = peak.training_peak("tiny-llama", precision="fp32", batch=2, seq=64, device="cpu")
    assert rc == 0 and (data["peak"], data["peak_phase"]) == (want.peak, want.phase)
    assert data["phases"] == want.phases and max(data["phases"].values()) == data["peak"]
    found = search.fit("tiny-llama", 0.01, batch=2, seq=64, precision="fp32", device="cpu")
    assert (data["max_batch"], data["max_seq"]) == (found["max_batch"], found["max_seq"])
    rc, out, _ = run(capsys, *argv, "--optimizer-impl", "foreach", "--json")
    foreach = json.loads(out)["phases"]["optimizer"]  # one more copy of the parameters
    single = want.details["parts"].opt_temp  # two of the largest tensor (+ the one before)
    assert foreach - data["phases"]["optimizer"] == want.breakdown.gradients - single
    rc, out, _ = run(capsys, *argv)
    assert out.splitlines()[1].lstrip().startswith("PEAK of a step")
    rc, out, _ = run(capsys, "llama-2-7b", "--gpus", "8", "--zero", "3", "--json")
    assert json.loads(out)["peak"] is None  # not modelled under sharding


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--optimizer", "sgd", "--optimizer-impl", "fused"], "fused applies to adamw"),
        (["--lora-dropout", "0.1"], "needs --method lora"),
        (["--lora-dropout", "2"], "--lora-dropout: expected a probability"),
        (["--mode", "infer", "--fit", "24"], "--fit apply to --mode train"),
    ],
)
def test_estimate_bad_levers_are_one_line(capsys, argv, match):
    rc, _, err = run(capsys, "tiny-llama", *argv)
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1
