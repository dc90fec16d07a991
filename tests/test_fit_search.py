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
