"""labkit.distributed.launch + labkit.distributed.parallel: a real 2-process gloo job (DDP and FSDP2), its bytes, traffic
and losses against one process and the textbook; launcher failures as one line."""

import tempfile
import uuid

import pytest
import torch
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
def launched():
    """One 2-rank launch: fp32 for both methods and every strategy, bf16 for full fine-tuning."""
    args = ["--model", "tiny-llama", "--steps", "2", "--global-batch", "2", "--seq", "16"]
    result = launch.run(
        "labkit.distributed.parallel",
        2,
        [*args, "--methods", "full,lora", "--precisions", "fp32,bf16"],
        timeout=240,
    )
    assert result.returncode == 0
    return {
        (r["job"]["method"], r["job"]["precision"], r["strategy"], r["rank"]): r
        for rep in result.reports
        for r in rep["runs"]
    }


@pytest.fixture(scope="module")
def two_ranks(launched):
    return {(m, s, r): run for (m, p, s, r), run in launched.items() if p == "fp32"}


@pytest.mark.slow
def test_bf16_halves_fsdp_traffic_but_not_ddp_under_autocast(launched, single):
    """DDP under autocast keeps fp32 weights and gradients: it all-reduces the fp32 gradient
    bytes. FSDP2 with a bf16 MixedPrecisionPolicy gathers and reduces half the bytes."""
    one = single["full"]["bytes"]
    ddp = launched[("full", "bf16", "ddp", 0)]
    assert ddp["payload_per_step"] == {"all_reduce": one["gradients"]}
    for strategy in ("zero2", "zero3"):
        fp32 = launched[("full", "fp32", strategy, 0)]["payload_per_step"]
        bf16 = launched[("full", "bf16", strategy, 0)]["payload_per_step"]
        assert bf16.keys() == fp32.keys()
        for op in fp32:
            assert 2 * bf16[op] == pytest.approx(fp32[op], rel=0.01), (strategy, op)
    losses = launched[("full", "bf16", "zero3", 0)]["losses"]
    ref = single["full"]["losses"]
    assert all(abs(a - b) < 0.05 * b for a, b in zip(losses, ref, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_losses_match_one_process(two_ranks, single, method):
    for strategy in ("ddp", "zero2", "zero3"):
        for rank in (0, 1):
            got = two_ranks[(method, strategy, rank)]["losses"]
            want = single[method]["losses"]
            assert got == pytest.approx(want, rel=1e-5, abs=1e-6), (strategy, rank)


def test_a_run_reports_its_seconds_per_step_and_a_peak_only_on_a_gpu(single):
    """seconds_per_step: the mean over the steps; peak_bytes: torch.cuda.max_memory_allocated
    from the wrapped model on (notebook 15's offload check), None for a run on the CPU."""
    for run in single.values():
        assert run["seconds_per_step"] > 0
        assert (run["peak_bytes"] is None) == (run["device"] == "cpu"), run["peak_bytes"]
        assert run["peak_bytes"] is None or run["peak_bytes"] > 0


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


@pytest.mark.parametrize(("gpus", "backend"), [(1, "gloo"), (2, "cpu:gloo,cuda:nccl")])
def test_fewer_gpus_than_ranks_run_on_the_cpu(monkeypatch, capsys, gpus, backend):
    """NCCL refuses two ranks on one GPU ("Duplicate GPU detected"): with one GPU and two ranks on
    the machine the workers pick the CPU and gloo, and rank 0 says why in one line."""
    monkeypatch.setattr(parallel.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(parallel.torch.cuda, "device_count", lambda: gpus)
    for name, value in (("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "2"), ("RANK", "0")):
        monkeypatch.setenv(name, value)
    assert parallel.one_gpu_per_rank(2) == (gpus >= 2) and parallel.one_gpu_per_rank(1)
    want = torch.device("cuda", 1) if gpus >= 2 else torch.device("cpu")
    assert parallel._device(1, 2) == want
    started = []

    class Started(Exception):
        pass

    def init_process_group(chosen):
        started.append(chosen)
        raise Started

    monkeypatch.setattr(parallel.dist, "init_process_group", init_process_group)
    monkeypatch.setattr(parallel.torch, "set_num_threads", lambda _: None)  # keep this process's
    with pytest.raises(Started):
        parallel.cli_main(["--strategies", "ddp"])
    assert started == [backend]
    said = capsys.readouterr().err.strip().splitlines()
    if gpus >= 2:
        assert said == []
    else:
        assert len(said) == 1 and "2 ranks on this machine but 1 GPU(s)" in said[0], said


def test_comm_time_and_links():
    payload = parallel.textbook_payload("ddp", 0, 16 * 10**9)
    # ring all-reduce of 16 GB over 8 GPUs on NVLink 4: 2 * 7/8 * 16e9 / 450e9 s
    assert parallel.comm_seconds(payload, 8, "nvlink4") == pytest.approx(2 * 7 / 8 * 16 / 450)
    assert all(link.source.startswith("https://") for link in parallel.LINKS.values())
    with pytest.raises(LabkitError, match="unknown link"):
        parallel.comm_seconds(payload, 8, "carrier-pigeon")


@pytest.mark.parametrize("nodes", [1, 2])
def test_launch_config_is_read_by_accelerate(nodes):
    """accelerate reads the file, and hands torchrun the options of the printed line."""
    from accelerate.commands.config.config_args import load_config_from_file

    from labkit import compat

    config, command = parallel.launch_config(8, nodes, "zero3")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
        yaml.safe_dump(config, fh)
        fh.flush()
        loaded = load_config_from_file(fh.name)
        options, env = compat.accelerate_torchrun_args(fh.name)
    assert loaded.num_processes == 8 * nodes and loaded.num_machines == nodes
    assert loaded.fsdp_config["fsdp_version"] == 2
    ours = dict(arg.removeprefix("--").split("=", 1) for arg in command[1:-1])
    assert ours.pop("nnodes") == str(nodes) and options.pop("nnodes", "1") == str(nodes)
    if nodes > 1:  # our line leaves the node's rank to fill in; the file says node 0
        assert ours.pop("node-rank") == f"<0..{nodes - 1}>" and options.pop("node-rank") == "0"
    assert ours == options
    assert env["FSDP_VERSION"] == "2" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    # transformers' from_pretrained reads this one: only one rank per node loads the weights
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"


def test_hybrid_sharding_sends_only_gradient_shards_between_nodes():
    w = g = 16 * 10**9
    hsdp = parallel.hybrid_comm_seconds(
        w, g, gpus_per_node=8, nodes=2, intra="nvlink4", inter="ib-hdr"
    )
    inside = parallel.comm_seconds(parallel.textbook_payload("zero3", w, g), 8, "nvlink4")
    # each of 8 GPUs all-reduces its 2 GB gradient shard with its peer: 2 * 1/2 * 2 GB sent, all
    # through the node's one 25 GB/s port: 16 GB / 25 GB/s
    assert hsdp["inside"] == pytest.approx(inside)
    assert hsdp["between"] == pytest.approx(16 / 25)
    full = parallel.comm_seconds(parallel.textbook_payload("zero3", w, g), 16, "ib-hdr")
    assert hsdp["total"] < full / 2
    ports = parallel.hybrid_comm_seconds(
        w, g, gpus_per_node=8, nodes=2, intra="nvlink4", inter="ib-hdr", ports_per_node=8
    )
    assert ports["between"] == pytest.approx(hsdp["between"] / 8)
    with pytest.raises(LabkitError, match="unknown link"):
        parallel.hybrid_comm_seconds(w, g, gpus_per_node=8, nodes=2, intra="x", inter="ib-hdr")


@pytest.mark.slow
def test_notebook_03_memory_preset_matches_the_estimate():
    demo = launch.run("labkit.distributed.parallel", 2, ["--preset", "memory"], timeout=240)
    assert demo.returncode == 0
    report = demo.reports[0]
    assert report["model"] == "tiny-llama" and report["world_size"] == 2
    for rank in report["measured"]:
        assert rank["replicated"] == report["estimate"]["ddp"]
        assert rank["sharded"] == report["estimate"]["fsdp"]
    for part in ("weights", "gradients"):  # FSDP2 shards the gradients too
        assert 2 * rank["sharded"][part] == rank["replicated"][part]
    assert rank["replicated"]["gradients"] == rank["replicated"]["weights"]  # fp32, all trainable


def test_presets_are_defaults_that_options_override():
    preset, strategies, kinds, job = parallel.parse_args(["--preset", "memory", "--seq", "32"])
    assert (preset, strategies, kinds) == ("memory", ["ddp", "zero3"], [("full", "fp32")])
    assert job == {**job, "model": "tiny-llama", "steps": 1, "global_batch": 4, "seq": 32}
    assert parallel.parse_args([])[1] == ["ddp", "zero2", "zero3"]
    with pytest.raises(LabkitError, match="invalid choice: 'memry'"):
        parallel.parse_args(["--preset", "memry"])
    kinds = parallel.parse_args(["--methods", "full,lora", "--precisions", "fp32,bf16"])[2]
    assert kinds == [("full", "fp32"), ("lora", "fp32"), ("full", "bf16"), ("lora", "bf16")]
    with pytest.raises(LabkitError, match="unknown precision 'fp8'; accepted: fp32, bf16"):
        parallel.parse_args(["--precisions", "fp8"])
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


@pytest.mark.slow
def test_a_tied_bf16_model_in_the_hubs_layout_trains_under_every_engine(tmp_path):
    """Notebook 15's MODEL_ID may be a hub download: a bf16 checkpoint with tied embeddings and
    its tokenizer in one folder. The workers load it in fp32 and every engine matches one process."""
    import torch

    folder = tmp_path / "tied-bf16"
    zoo.load_model("tiny-qwen2").to(torch.bfloat16).save_pretrained(folder)
    zoo.load_tokenizer("zoo-llama").save_pretrained(folder)
    job = parallel.Job(model=str(folder), steps=2, global_batch=2, seq=16)
    one = parallel.train(job, "single")
    params = sum(p.numel() for p in zoo.load_model(folder).parameters())  # tied: counted once
    assert one["bytes"]["weights"] == 4 * params  # fp32, whatever the checkpoint's dtype
    args = ["--model", str(folder), "--steps", "2", "--global-batch", "2", "--seq", "16"]
    result = launch.run(
        "labkit.distributed.parallel", 2, [*args, "--strategies", "ddp,zero3"], timeout=240
    )
    for report in result.reports:
        for run in report["runs"]:
            assert run["losses"] == pytest.approx(one["losses"], rel=1e-5), run["strategy"]


def test_held_bytes_counts_adamws_step_counters_as_optimizer_state():
    run = {"bytes": {"weights": 40, "gradients": 40, "optimizer": 80, "optimizer_counters": 8}}
    assert parallel.held_bytes(run) == {"weights": 40, "gradients": 40, "optimizer": 88}
