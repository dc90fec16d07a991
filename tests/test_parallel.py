"""labkit.distributed.launch + labkit.distributed.parallel: a real 2-process gloo job (DDP and FSDP2), its bytes, traffic
and losses against one process and the textbook; launcher failures as one line."""

import tempfile
import uuid

import pytest
import yaml

from labkit import LabkitError
from labkit.distributed import launch, parallel
from labkit.memory import estimator
from labkit.models import zoo

JOB = parallel.Job(model="tiny-llama", steps=2, global_batch=2, seq=16)


@pytest.fixture(scope="module")
def single():
    """One process on the whole batch, per method: the reference every strategy must match."""
    return {
        m: parallel.train(parallel.Job(**{**JOB.__dict__, "method": m}), "single")
        for m in ("full", "lora")
    }


@pytest.fixture(scope="module")
def two_ranks():
    args = ["--model", "tiny-llama", "--steps", "2", "--global-batch", "2", "--seq", "16"]
    result = launch.run(
        "labkit.distributed.parallel", 2, [*args, "--methods", "full,lora"], timeout=240
    )
    assert result.returncode == 0
    return {
        (r["job"]["method"], r["strategy"], r["rank"]): r
        for rep in result.reports
        for r in rep["runs"]
    }


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_losses_match_one_process(two_ranks, single, method):
    for strategy in ("ddp", "zero2", "zero3"):
        for rank in (0, 1):
            got = two_ranks[(method, strategy, rank)]["losses"]
            want = single[method]["losses"]
            assert got == pytest.approx(want, rel=1e-5, abs=1e-6), (strategy, rank)


@pytest.mark.slow
def test_bytes_per_rank(two_ranks, single):
    one = single["full"]["bytes"]
    ddp = two_ranks[("full", "ddp", 0)]["bytes"]
    assert ddp == one  # DDP replicates everything
    for strategy in ("zero2", "zero3"):
        ranks = [two_ranks[("full", strategy, r)]["bytes"] for r in (0, 1)]
        for key in ("weights", "gradients", "optimizer"):
            assert sum(b[key] for b in ranks) == one[key], (strategy, key)  # a true split
        # AdamW's step counters are not sharded: every rank keeps all of them
        assert all(b["optimizer_counters"] == one["optimizer_counters"] for b in ranks)
    est = estimator.training_memory(
        zoo.load_config("tiny-llama"), precision="fp32", batch=2, seq=16
    )
    z3 = estimator.sharded(est, 2, "zero3")
    rank0 = two_ranks[("full", "zero3", 0)]["bytes"]
    assert abs(rank0["weights"] - z3.weights) <= 0.01 * z3.weights  # uneven dim-0 splits only


@pytest.mark.slow
def test_traffic_matches_textbook(two_ranks, single):
    one = single["full"]["bytes"]
    for strategy in ("ddp", "zero2", "zero3"):
        run = two_ranks[("full", strategy, 0)]
        want = parallel.textbook_payload(strategy, one["weights"], one["gradients"])
        assert set(run["payload_per_step"]) == set(want)
        for op, nbytes in want.items():  # FSDP2 pads each shard to equal size: < 1% here
            assert nbytes <= run["payload_per_step"][op] <= 1.01 * nbytes, (strategy, op)
    sent = {s: two_ranks[("full", s, 0)]["ring_sent_per_step"] for s in ("ddp", "zero3")}
    assert sent["zero3"] / sent["ddp"] == pytest.approx(1.5, rel=0.01)  # 3(N-1)/N vs 2(N-1)/N
    lora = two_ranks[("lora", "ddp", 0)]
    assert lora["payload_per_step"]["all_reduce"] == lora["bytes"]["gradients"]  # adapters only


@pytest.mark.slow
def test_job_and_launcher_errors():
    with pytest.raises(LabkitError, match="does not split over 3 processes"):
        parallel.Job(global_batch=4).check(3)
    with pytest.raises(LabkitError, match="unknown method 'qlora'; accepted: full, lora"):
        parallel.Job(method="qlora").check()
    with pytest.raises(LabkitError, match="unknown strategy 'zero4'"):
        parallel.train(JOB, "zero4")
    with pytest.raises(LabkitError, match="nproc must be a positive integer"):
        launch.run("labkit.distributed.parallel", 0)
    with pytest.raises(LabkitError, match=r"exited with code 1: .*unknown strategy 'bogus'"):
        launch.run("labkit.distributed.parallel", 1, ["--strategies", "bogus"], timeout=120)


def test_comm_time_and_links():
    payload = parallel.textbook_payload("ddp", 0, 16 * 10**9)
    # ring all-reduce of 16 GB over 8 GPUs on NVLink 4: 2 * 7/8 * 16e9 / 450e9 s
    assert parallel.comm_seconds(payload, 8, "nvlink4") == pytest.approx(2 * 7 / 8 * 16 / 450)
    assert all(link.source.startswith("https://") for link in parallel.LINKS.values())
    with pytest.raises(LabkitError, match="unknown link"):
        parallel.comm_seconds(payload, 8, "carrier-pigeon")


@pytest.mark.parametrize("nodes", [1, 2])
def test_launch_config_is_read_by_accelerate(nodes):
    from accelerate.commands.config.config_args import load_config_from_file

    config, command = parallel.launch_config(8, nodes, "zero3")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
        yaml.safe_dump(config, fh)
        fh.flush()
        loaded = load_config_from_file(fh.name)
    assert loaded.num_processes == 8 * nodes and loaded.num_machines == nodes
    assert loaded.fsdp_config["fsdp_version"] == 2
    assert f"--nnodes={nodes}" in command


@pytest.mark.slow
def test_notebook_03_memory_preset_matches_the_estimate():
    demo = launch.run("labkit.distributed.parallel", 2, ["--preset", "memory"], timeout=240)
    assert demo.returncode == 0
    report = demo.reports[0]
    assert report["model"] == "tiny-llama" and report["world_size"] == 2
    for rank in report["measured"]:
        assert rank["replicated"] == report["estimate"]["ddp"]
        assert rank["sharded"] == report["estimate"]["fsdp"]
    assert 2 * rank["sharded"]["weights"] == rank["replicated"]["weights"]


def test_presets_are_defaults_that_options_override():
    preset, strategies, methods, job = parallel.parse_args(["--preset", "memory", "--seq", "32"])
    assert (preset, strategies, methods) == ("memory", ["ddp", "zero3"], ["full"])
    assert job == {**job, "model": "tiny-llama", "steps": 1, "global_batch": 4, "seq": 32}
    assert parallel.parse_args([])[1] == ["ddp", "zero2", "zero3"]
    with pytest.raises(LabkitError, match="invalid choice: 'memry'"):
        parallel.parse_args(["--preset", "memry"])
    with pytest.raises(LabkitError, match="compares ddp with zero3, got zero2"):
        parallel.memory_report([{"strategy": "zero2"}], JOB, rank=0, world=1)


@pytest.fixture
def mark(monkeypatch):
    """A unique value every process of a launch inherits, to find survivors by."""
    value = uuid.uuid4().hex
    monkeypatch.setenv("LABKIT_TEST_MARK", value)
    yield value
    for proc in launch.processes_with("LABKIT_TEST_MARK", value):
        proc.kill()


def _ranks_running(mark: str) -> list:
    return launch.processes_with("LABKIT_TEST_MARK", mark)


@pytest.mark.slow
def test_failures_leave_no_process_and_say_one_line(mark):
    import socket

    with pytest.raises(LabkitError, match="did not finish in 1 s"):
        launch.run("labkit.distributed.parallel", 2, ["--model", "tiny-llama"], timeout=1)
    assert _ranks_running(mark) == []
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(LabkitError, match=f"port {taken} is in use"):
            launch.run("labkit.distributed.parallel", 2, port=taken)


@pytest.mark.slow
def test_ctrl_c_stops_every_rank(monkeypatch, mark):
    import subprocess as sp

    real = sp.Popen.communicate

    def interrupted(self, *args, **kwargs):
        if kwargs.get("timeout") == 60:  # the launcher's wait, not the stop's own
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(sp.Popen, "communicate", interrupted)
    with pytest.raises(LabkitError, match="was interrupted; every rank was stopped"):
        launch.run("labkit.distributed.parallel", 2, ["--model", "tiny-llama"], timeout=60)
    monkeypatch.undo()
    assert _ranks_running(mark) == []
