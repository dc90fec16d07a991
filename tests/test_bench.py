"""labkit.inference.bench: bandwidth, FLOP/s and decode timings, and interleaved measurement.

No test here asserts how fast this machine is: only that the figures are positive and finite,
that each function times what it says, and that interleaving keeps every round of every task.
"""

import math

import pytest
import torch

from labkit import LabkitError
from labkit.inference import bench, roofline
from labkit.models import zoo


def test_measurements_are_positive_and_consistent():
    bw = bench.copy_bandwidth(4 * 2**20, repeats=2, n_threads=1)
    rd = bench.read_bandwidth(4 * 2**20, repeats=2, n_threads=1)
    cold = bench.read_bandwidth(2**20, repeats=2, n_threads=1, before=bench.evict_caches(2**20))
    fl = bench.matmul_flops(64, repeats=2, n_threads=1)
    assert all(math.isfinite(x) and x > 0 for x in (bw, rd, cold, fl))
    m = roofline.machine(rd, fl)
    assert m.bandwidth == pytest.approx(rd) and m.flops == pytest.approx(fl)
    before = torch.get_num_threads()
    with bench.threads(1) as n:
        assert n == 1
    assert torch.get_num_threads() == before
    with pytest.raises(LabkitError, match="nbytes must be >= 1 MiB"):
        bench.copy_bandwidth(1000)
    with pytest.raises(LabkitError, match="thread count must be >= 1"), bench.threads(0):
        pass
    with pytest.raises(LabkitError, match="n must be >= 16"):
        bench.matmul_flops(8)


def test_best_seconds_runs_before_each_timed_call():
    calls = []
    bench.best_seconds(lambda: calls.append("f"), repeats=2, before=lambda: calls.append("b"))
    assert calls == ["f", "b", "f", "b", "f"]  # warmup, then before + run per repeat
    flush = bench.evict_caches(2**20)
    assert float(flush()) == 2**18
    with pytest.raises(LabkitError, match="repeats must be >= 1"):
        bench.best_seconds(lambda: None, repeats=0)


def test_interleaved_runs_tasks_in_turn_and_keeps_every_round():
    order = []

    def task(name, t):
        def run():
            order.append(name)
            return t

        return run

    times = bench.interleaved({"a": task("a", 2.0), "b": task("b", 0.5)}, rounds=3, warmup=1)
    assert order == ["a", "b"] * 4  # one warm-up round, then three, each task once per round
    assert times == {"a": [2.0] * 3, "b": [0.5] * 3}
    nbytes, read = bench.read_task(2**20)
    flops, product = bench.matmul_task(32)
    got = bench.interleaved({"read": read, "matmul": product}, rounds=2)
    assert nbytes == 2**20 and flops == 2 * 32**3
    assert all(len(v) == 2 and min(v) > 0 for v in got.values())
    with pytest.raises(LabkitError, match="returned -1"):
        bench.interleaved({"bad": lambda: -1}, rounds=1)
    with pytest.raises(LabkitError, match="rounds must be >= 1"):
        bench.interleaved({"a": lambda: 1.0}, rounds=0)
    with pytest.raises(LabkitError, match="at least one task"):
        bench.interleaved({}, rounds=1)


def test_measure_decode_with_and_without_cache():
    model = zoo.load_model("tiny-llama")
    kw = dict(batch=2, prompt=4, new_tokens=3, repeats=1)
    on = bench.measure_decode(model, **kw)
    off = bench.measure_decode(model, use_cache=False, **kw)
    assert on.use_cache and not off.use_cache and on.batch == 2 and on.context == 6
    assert math.isfinite(on.tokens_per_s) and on.tokens_per_s == pytest.approx(2 / on.step_s)
    with pytest.raises(LabkitError, match="prompt and new_tokens must be >= 1"):
        bench.measure_decode(model, new_tokens=0)
    with pytest.raises(LabkitError, match="batch must be a positive integer"):
        bench.measure_decode(model, batch=0)


def test_decode_with_the_cache_feeds_the_cache():
    """The cached path really reuses the cache: each step's logits equal a full recompute's."""
    model = zoo.load_model("tiny-llama")
    ids = torch.randint(
        0, model.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(1)
    )
    from transformers import DynamicCache

    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(ids[:, :4], cache=cache, use_cache=True)
        step = model(ids[:, 4:], cache=cache, use_cache=True).logits[0, -1]
        full = model(ids, use_cache=False).logits[0, -1]
    assert torch.allclose(step, full, atol=1e-5)


def test_thread_clock_counts_only_this_threads_work():
    import time

    with bench.threads(1):
        assert bench.seconds(lambda: time.sleep(0.05), clock_kind="wall") >= 0.05
        assert bench.seconds(lambda: time.sleep(0.05), clock_kind="thread") < 0.02  # no CPU used
        nbytes, read = bench.read_task(2**20, clock_kind="thread")
        assert read() > 0
    with bench.threads(2), pytest.raises(LabkitError, match="torch uses 2 threads"):
        bench.clock("thread")
    with pytest.raises(LabkitError, match="unknown clock 'cpu'; accepted: wall, thread"):
        bench.clock("cpu")
    model = zoo.load_model("tiny-llama")
    with bench.threads(1):
        step = bench.DecodeSteps(model, prompt=3, clock_kind="thread")
        assert step.context == 3 and step() > 0 and step.context == 4
