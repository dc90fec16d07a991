"""When one GPU is not enough: the same training job under DDP and FSDP2 sharding, measured.

Run by :func:`labkit.distributed.launch.run` as ``python -m labkit.distributed.parallel
--strategies zero3 ...`` on N CPU processes (gloo backend); ``--preset memory`` is notebook 03's
demo (:data:`PRESETS`). Each rank trains the zoo model for a few steps on its share of one
global batch and reports: the loss of every step (averaged over ranks, so it can be compared with
one process on the whole batch), the bytes of ITS OWN parameters, gradients and optimizer state
(``DTensor.to_local()`` for sharded ones), the bytes its collectives moved and its seconds per
step (on a GPU also its peak memory, ``peak_bytes``; ``None`` on the CPU).

Strategies (:data:`STRATEGIES`; the engines as they are, nothing home-made): DDP, FSDP2's
``fully_shard`` with and without ``reshard_after_forward``, and with ``CPUOffloadPolicy``
(sharded states in CPU memory on a GPU machine; here everything is on the CPU already).

Precisions (:data:`PRECISIONS`, ``--precisions fp32,bf16``): ``fp32`` everywhere, or ``bf16`` as
each engine does it: DDP (and one process) under ``torch.autocast`` with fp32 weights and
gradients, FSDP2 gathering and reducing in bf16 (``MixedPrecisionPolicy``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from labkit import LabkitError, unknown
from labkit.checks import choice, positive
from labkit.distributed import launch

#: Strategy name -> what it is, in one line.
STRATEGIES = {
    "single": "one process, the whole global batch (the reference)",
    "ddp": "DistributedDataParallel: everything replicated, gradients all-reduced",
    "zero2": "FSDP2, reshard_after_forward=False: states sharded, gathered weights kept to backward",
    "zero3": "FSDP2 fully_shard: states sharded, weights re-gathered in backward",
    "offload": "FSDP2 fully_shard + CPUOffloadPolicy: sharded states live in CPU memory",
}
#: Precision name -> how each engine runs it (see the module docstring).
PRECISIONS = {
    "fp32": "fp32 weights, gradients, compute and collectives",
    "bf16": "DDP: bf16 autocast, fp32 weights and gradients; FSDP2: MixedPrecisionPolicy "
    "(param_dtype=bf16, reduce_dtype=bf16), fp32 sharded weights",
}
#: The collectives whose payload bytes are counted (what FSDP2 and our DDP hook call).
COLLECTIVES = ("all_gather_single", "reduce_scatter_single", "all_reduce")


@dataclass(frozen=True)
class Job:
    """One small training job: model, method, steps and the GLOBAL batch (split over ranks)."""

    model: str = "zoo-llama"
    method: str = "full"
    steps: int = 3
    global_batch: int = 4
    seq: int = 32
    lr: float = 1e-3
    lora_r: int = 8
    seed: int = 0
    precision: str = "fp32"

    def check(self, world: int = 1) -> Job:
        choice("method", self.method, ("full", "lora"))
        choice("precision", self.precision, PRECISIONS)
        for name in ("steps", "global_batch", "seq", "lora_r"):
            positive(name, getattr(self, name))
        if self.global_batch % world:
            raise LabkitError(
                f"global batch {self.global_batch} does not split over {world} processes; "
                "accepted: a multiple of the number of processes"
            )
        if not (isinstance(self.lr, float | int) and math.isfinite(self.lr) and self.lr > 0):
            raise LabkitError(f"lr must be a positive finite number, got {self.lr!r}")
        return self


def batches(job: Job) -> torch.Tensor:
    """``[steps, global_batch, seq]`` token ids cut from the course corpus (same on every rank)."""
    from labkit.data import loaders
    from labkit.models import zoo

    tokenizer = zoo.load_tokenizer(job.model)
    need = job.steps * job.global_batch * job.seq
    ids: list[int] = []
    for line in loaders.load_corpus("train"):
        ids += tokenizer(line)["input_ids"]
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise LabkitError(f"the corpus has {len(ids)} tokens, the job needs {need}")
    return torch.tensor(ids[:need]).view(job.steps, job.global_batch, job.seq)


def build_model(job: Job) -> torch.nn.Module:
    """The zoo model (its real weights), with LoRA on q_proj/v_proj for ``method="lora"``."""
    from labkit.models import zoo

    torch.manual_seed(job.seed)
    model = zoo.load_model(job.model, dtype=torch.float32).train()
    if job.method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=job.lora_r, lora_alpha=2 * job.lora_r, lora_dropout=0.0)
        model = get_peft_model(model, config)  # peft's default targets for Llama: q_proj, v_proj
    return model


def _nbytes(t: torch.Tensor) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t  # a DTensor: this rank's shard
    return t.numel() * t.element_size()


def local_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this process holds: parameters, gradients, optimizer state (own shard only).

    ``optimizer_counters`` is AdamW's per-tensor ``step`` counters, which are never sharded.
    """
    params = sum(_nbytes(p) for p in model.parameters())
    grads = sum(_nbytes(p.grad) for p in model.parameters() if p.grad is not None)
    state = counters = 0
    for st in optimizer.state.values():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                if key == "step":
                    counters += _nbytes(v)
                else:
                    state += _nbytes(v)
    return {
        "weights": params,
        "gradients": grads,
        "optimizer": state,
        "optimizer_counters": counters,
    }


class Traffic:
    """Counts the payload bytes of the collectives called while :meth:`counting` is active.

    Payload = the full tensor a collective works on (an all-gather's output, a reduce-scatter's
    input, an all-reduce's buffer). A ring algorithm makes each rank SEND (N-1)/N of an all-gather's
    or reduce-scatter's payload and 2(N-1)/N of an all-reduce's (:func:`ring_sent`).
    """

    def __init__(self) -> None:
        self.payload: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._on = False

    def _wrap(self, name: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            if self._on:
                if name == "all_gather_single":
                    tensor = kwargs.get("output_tensor", args[0] if args else None)
                elif name == "reduce_scatter_single":
                    tensor = kwargs.get("input", args[1] if len(args) > 1 else None)
                else:
                    tensor = kwargs.get("tensor", args[0] if args else None)
                self.payload[name] += _nbytes(tensor)
                self.calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    @contextmanager
    def installed(self):
        """Patch ``torch.distributed``'s collectives for the duration (restored afterwards)."""
        originals = {name: getattr(dist, name) for name in COLLECTIVES}
        for name, fn in originals.items():
            setattr(dist, name, self._wrap(name, fn))
        try:
            yield self
        finally:
            for name, fn in originals.items():
                setattr(dist, name, fn)

    @contextmanager
    def counting(self):
        self._on = True
        try:
            yield
        finally:
            self._on = False


def ring_sent(payload: dict[str, int], world: int) -> float:
    """Bytes each rank sends for these payloads with ring algorithms (the textbook model)."""
    share = (world - 1) / world
    return share * (
        payload.get("all_gather_single", 0)
        + payload.get("reduce_scatter_single", 0)
        + 2 * payload.get("all_reduce", 0)
    )


#: Textbook payloads per training step, in units of the (trainable) gradient bytes G and the
#: parameter bytes W: DDP all-reduces the gradients once; FSDP2 all-gathers the weights before
#: forward (and, resharding after forward, again before backward) and reduce-scatters gradients.
TEXTBOOK_PAYLOAD = {
    "ddp": {"all_reduce": ("G", 1)},
    "zero2": {"all_gather_single": ("W", 1), "reduce_scatter_single": ("G", 1)},
    "zero3": {"all_gather_single": ("W", 2), "reduce_scatter_single": ("G", 1)},
}


def textbook_payload(strategy: str, weight_bytes: int, grad_bytes: int) -> dict[str, int]:
    """Payload bytes per step the textbook model predicts for ``strategy`` (see TEXTBOOK_PAYLOAD)."""
    choice("strategy", strategy, TEXTBOOK_PAYLOAD)
    size = {"W": weight_bytes, "G": grad_bytes}
    return {op: size[kind] * times for op, (kind, times) in TEXTBOOK_PAYLOAD[strategy].items()}


@dataclass(frozen=True)
class Link:
    """An interconnect: bandwidth per direction in GB/s (10^9 bytes/s) and where it comes from."""

    name: str
    gb_per_s: float
    source: str


#: Per-direction bandwidths (vendors quote NVLink and PCIe both directions together: halved here).
LINKS = {
    "pcie4": Link(
        "PCIe 4.0 x16",
        32.0,
        "https://www.nvidia.com/en-us/data-center/a100/ (PCIe Gen4: 64 GB/s both ways)",
    ),
    "pcie5": Link(
        "PCIe 5.0 x16",
        64.0,
        "https://www.nvidia.com/en-us/data-center/h100/ (PCIe Gen5: 128 GB/s both ways)",
    ),
    "nvlink3": Link(
        "NVLink 3 (A100 SXM)",
        300.0,
        "https://www.nvidia.com/en-us/data-center/a100/ (NVLink: 600 GB/s both ways)",
    ),
    "nvlink4": Link(
        "NVLink 4 (H100 SXM)",
        450.0,
        "https://www.nvidia.com/en-us/data-center/h100/ (NVLink: 900 GB/s both ways)",
    ),
    "ib-hdr": Link(
        "InfiniBand HDR, 1 port",
        25.0,
        "https://www.nvidia.com/en-us/networking/infiniband-adapters/ (HDR: 200 Gb/s)",
    ),
    "ib-ndr": Link(
        "InfiniBand NDR, 1 port",
        50.0,
        "https://www.nvidia.com/en-us/networking/quantum2/ (NDR: 400 Gb/s)",
    ),
}


def comm_seconds(payload: dict[str, int], world: int, link: str) -> float:
    """Seconds per step to move ``payload`` with ring collectives over ``link`` (bandwidth only:
    no latency — a lower bound on the communication time; overlap with compute is not modelled)."""
    choice("link", link, LINKS)
    positive("world size", world)
    return ring_sent(payload, world) / (LINKS[link].gb_per_s * 1e9)


def hybrid_comm_seconds(
    weight_bytes: int,
    grad_bytes: int,
    *,
    gpus_per_node: int,
    nodes: int,
    intra: str,
    inter: str,
    ports_per_node: int = 1,
) -> dict[str, float]:
    """Seconds per step of hybrid sharding (FSDP2 HSDP, DeepSpeed MiCS): ZeRO-3 inside each node
    over ``intra``, the nodes holding replicas; only the gradient shards cross ``inter``.

    Not ZeRO++'s hpZ: that keeps the model states sharded over all GPUs and adds a weight copy
    sharded inside each node, which removes only the backward all-gather between nodes.

    Inside a node: two all-gathers of the weights and a reduce-scatter of the gradients over
    ``gpus_per_node`` ranks. Between nodes: each GPU all-reduces its 1/``gpus_per_node`` gradient
    shard with its peers on the other nodes (a ring over ``nodes`` ranks); the node's GPUs share
    its ``ports_per_node`` ports. Bandwidth only (a lower bound), as :func:`comm_seconds`.
    """
    for name, value in (("gpus_per_node", gpus_per_node), ("nodes", nodes)):
        positive(name, value)
    positive("ports_per_node", ports_per_node)
    choice("link", inter, LINKS)
    inside = comm_seconds(textbook_payload("zero3", weight_bytes, grad_bytes), gpus_per_node, intra)
    shard = grad_bytes / gpus_per_node
    per_node = gpus_per_node * ring_sent({"all_reduce": shard}, nodes)  # all the node's GPUs
    ports = min(ports_per_node, gpus_per_node)
    between = per_node / (ports * LINKS[inter].gb_per_s * 1e9)
    return {"inside": inside, "between": between, "total": inside + between}


def launch_config(
    gpus_per_node: int = 8, nodes: int = 1, strategy: str = "zero3", main_host: str = "node0"
) -> tuple[dict, list[str]]:
    """An ``accelerate launch`` config (as a dict to write as YAML) and the matching ``torchrun``
    command for ``nodes`` x ``gpus_per_node`` GPUs. Run the same on every node, with its own rank
    (``machine_rank`` / ``--node-rank``): that is the only line that differs between nodes. The
    torchrun options are those ``accelerate launch`` derives from the file (notebook 15 checks it
    with :func:`labkit.compat.accelerate_torchrun_args`)."""
    choice("strategy", strategy, ("ddp", "zero2", "zero3"))
    positive("gpus_per_node", gpus_per_node)
    positive("nodes", nodes)
    config: dict = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU" if strategy == "ddp" else "FSDP",
        "num_machines": nodes,
        "num_processes": nodes * gpus_per_node,
        "machine_rank": 0,
        "main_process_ip": main_host if nodes > 1 else None,
        "main_process_port": 29500,
        "mixed_precision": "bf16",
    }
    if strategy != "ddp":
        config["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_reshard_after_forward": strategy == "zero3",
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            # one process per node reads the checkpoint; the others get meta tensors and their
            # shards from the main process in prepare (accelerate's default, false, has every
            # rank load the whole model into host RAM); accelerate's launcher requires the next
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_sync_module_states": True,
        }
    config = {k: v for k, v in config.items() if v is not None}
    # the options accelerate itself hands torchrun for this file (its prepare_multi_gpu_env):
    # one node: the port; several: each node's rank and the rendezvous on the main node
    torchrun = ["torchrun", f"--nnodes={nodes}", f"--nproc-per-node={gpus_per_node}"]
    if nodes > 1:
        torchrun += [f"--node-rank=<0..{nodes - 1}>", f"--rdzv-endpoint={main_host}:29500"]
    else:
        torchrun += ["--master-port=29500"]
    return config, [*torchrun, "train.py"]


def _ddp_hook(traffic: Traffic):
    """DDP communication hook: all-reduce each gradient bucket through ``dist.all_reduce``
    (so :class:`Traffic` sees it), then divide by the world size, as DDP's default does."""

    def hook(state, bucket):
        buffer = bucket.buffer()
        buffer.div_(dist.get_world_size())
        work = dist.all_reduce(buffer, async_op=True)
        return work.get_future().then(lambda fut: fut.value()[0])

    return hook


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None) or getattr(base, "transformer", None)
    layers = getattr(inner, "layers", None) or getattr(inner, "h", None)
    if layers is None:
        raise LabkitError(f"cannot find the decoder blocks of {type(base).__name__}")
    return list(layers)


def wrap(
    model: torch.nn.Module, strategy: str, traffic: Traffic | None = None, precision: str = "fp32"
) -> torch.nn.Module:
    """Apply ``strategy`` to ``model`` inside an initialised process group; ``precision="bf16"``
    gives FSDP2 a bf16 ``MixedPrecisionPolicy`` (DDP's bf16 is autocast, in :func:`train`)."""
    if strategy == "single":
        return model
    if strategy == "ddp":
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        if traffic is not None:
            ddp.register_comm_hook(None, _ddp_hook(traffic))
        return ddp
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    options: dict = {"reshard_after_forward": strategy != "zero2"}
    if precision == "bf16":
        options["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16
        )
    if strategy == "offload":
        options["offload_policy"] = CPUOffloadPolicy()
    for block in _blocks(model):
        fully_shard(block, **options)
    fully_shard(model, **options)
    return model


def one_gpu_per_rank(ranks: int) -> bool:
    """Whether each of ``ranks`` ranks on this machine gets a CUDA GPU of its own.

    NCCL refuses two ranks on one GPU ("Duplicate GPU detected"), so with fewer GPUs than ranks
    (one GPU, ``NPROC = 2``) the workers run on the CPU over gloo instead.
    """
    return torch.cuda.is_available() and torch.cuda.device_count() >= ranks


def _device(rank: int, local_ranks: int = 1) -> torch.device:
    """One GPU per rank where every rank on this machine has one (NCCL), else the CPU (gloo)."""
    if one_gpu_per_rank(local_ranks):
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


def _local_ranks(world: int) -> int:
    """Ranks on this machine: torchrun's ``LOCAL_WORLD_SIZE``, else ``world`` (one machine)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world))


def train(job: Job, strategy: str, rank: int = 0, world: int = 1) -> dict:
    """Train ``job`` under ``strategy`` as rank ``rank`` of ``world``; return this rank's report."""
    choice("strategy", strategy, STRATEGIES)
    job.check(world)
    device = _device(rank, _local_ranks(world))
    data = batches(job).to(device)
    traffic = Traffic()
    micro = job.global_batch // world
    with traffic.installed():
        model = wrap(build_model(job).to(device), strategy, traffic, job.precision)
        autocast = job.precision == "bf16" and strategy in ("single", "ddp")
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=job.lr)
        if device.type == "cuda":  # peak_bytes: the steps' peak, not the unsharded model's load
            torch.cuda.reset_peak_memory_stats(device)
        losses, start = [], time.perf_counter()
        for step in range(job.steps):
            ids = data[step, rank * micro : (rank + 1) * micro]
            with traffic.counting():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                optimizer.step()
            mean = loss.detach().float().clone()
            if world > 1:
                dist.all_reduce(mean)
                mean /= world
            losses.append(mean.item())  # .item() waits for the step's GPU work
            if step < job.steps - 1:
                optimizer.zero_grad(set_to_none=True)
        seconds = (time.perf_counter() - start) / job.steps
        held = local_bytes(model, optimizer)
    payload = {k: v // job.steps for k, v in traffic.payload.items()}
    return {
        "rank": rank,
        "world": world,
        "strategy": strategy,
        "job": asdict(job),
        "device": device.type,
        "losses": losses,
        "bytes": held,
        "payload_per_step": payload,
        "calls_per_step": {k: v // job.steps for k, v in traffic.calls.items()},
        "ring_sent_per_step": ring_sent(payload, world),
        "seconds_per_step": seconds,  # the mean of the steps, the first one's start-up included
        "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


#: Named settings of the worker (``--preset NAME``; options given after it still apply).
#: ``memory``: notebook 03's demo, the bytes one AdamW step leaves on each of 2 ranks, replicated
#: (DDP) vs fully sharded (ZeRO-3), next to :func:`labkit.memory.estimator.sharded`'s figures.
PRESETS: dict[str, dict] = {
    "memory": {
        "model": "tiny-llama",
        "strategies": "ddp,zero3",
        "methods": "full",
        "steps": 1,
        "global_batch": 4,
        "seq": 16,
    },
}


def held_bytes(report: dict) -> dict[str, int]:
    """Parameter, gradient and optimizer bytes of one run (AdamW's step counters counted as
    state). DDP's gradient buckets (a second gradient-sized buffer unless
    ``gradient_as_bucket_view=True``) live inside its reducer and are not counted."""
    held = report["bytes"]
    return {
        "weights": held["weights"],
        "gradients": held["gradients"],
        "optimizer": held["optimizer"] + held["optimizer_counters"],
    }


def memory_report(runs: list[dict], job: Job, rank: int, world: int) -> dict:
    """The ``memory`` preset's report: every rank's replicated (``ddp``) and sharded (``zero3``)
    weight, gradient and optimizer bytes, gathered; rank 0's also holds the estimator's DDP and
    FSDP figures for the job."""
    by_strategy = {r["strategy"]: r for r in runs}
    if not {"ddp", "zero3"} <= set(by_strategy):
        raise LabkitError(
            f"the memory report compares ddp with zero3, got {', '.join(by_strategy)}; "
            "accepted: --strategies with both ddp and zero3"
        )
    mine = {k: held_bytes(by_strategy[s]) for k, s in (("replicated", "ddp"), ("sharded", "zero3"))}
    gathered: list[dict] = [{} for _ in range(world)]
    dist.all_gather_object(gathered, mine)
    report: dict = {"model": job.model, "world_size": world, "rank": rank, "measured": gathered}
    if rank == 0:
        from labkit.memory import estimator
        from labkit.models import zoo

        est = estimator.training_memory(
            zoo.load_config(job.model),
            precision="fp32",
            batch=job.global_batch // world,
            seq=job.seq,
        )
        ddp, z3 = estimator.sharded(est, world, "ddp"), estimator.sharded(est, world, "fsdp")
        report["estimate"] = {
            name: {k: getattr(b, k) for k in ("weights", "gradients", "optimizer")}
            for name, b in (("ddp", ddp), ("fsdp", z3))
        }
    return report


def parse_args(
    argv: list[str] | None,
) -> tuple[str | None, list[str], list[tuple[str, str]], dict]:
    """The worker's command line -> ``(preset, strategies, [(method, precision), ...], Job
    fields)``; a preset's settings are defaults, so options given with it win."""
    from labkit.cli import Parser

    parser = Parser(prog="python -m labkit.distributed.parallel")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="named settings (PRESETS)")
    parser.add_argument("--strategies", default="ddp,zero2,zero3", help="comma-separated")
    parser.add_argument("--methods", default="full", help="comma-separated: full, lora")
    parser.add_argument("--precisions", default="fp32", help="comma-separated: fp32, bf16")
    for field, default in asdict(Job()).items():
        if field not in ("method", "precision"):
            parser.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=default)
    preset = parser.parse_args(argv).preset
    if preset:
        parser.set_defaults(**PRESETS[preset])
    args = vars(parser.parse_args(argv))
    del args["preset"]
    strategies = args.pop("strategies").split(",")
    methods = args.pop("methods").split(",")
    precisions = args.pop("precisions").split(",")
    for name in strategies:
        if name not in STRATEGIES or name == "single":
            raise unknown("strategy", name, [s for s in STRATEGIES if s != "single"])
    for name in precisions:
        choice("precision", name, PRECISIONS)
    return preset, strategies, [(m, p) for p in precisions for m in methods], args


def cli_main(argv: list[str] | None = None) -> int:
    """Worker entry point under torchrun:
    ``python -m labkit.distributed.parallel --strategies ddp,zero3 --methods full,lora
    --precisions fp32,bf16 [job options]``
    or ``--preset memory`` (notebook 03).

    Runs every (method, strategy) pair in turn in the same processes (one start-up, one import)
    and writes this rank's list of reports with :func:`labkit.distributed.launch.write_report`
    (the ``memory`` preset writes :func:`memory_report` instead).
    """
    from labkit import hardware

    preset, strategies, kinds, job_args = parse_args(argv)
    hardware.quiet_logs()
    torch.set_num_threads(1)
    local = _local_ranks(int(os.environ.get("WORLD_SIZE", "1")))
    gpus = one_gpu_per_rank(local)
    if torch.cuda.is_available() and not gpus and os.environ.get("RANK", "0") == "0":
        print(
            f"{local} ranks on this machine but {torch.cuda.device_count()} GPU(s): NCCL needs one "
            "GPU per rank, so the ranks run on the CPU over gloo",
            file=sys.stderr,
        )
    dist.init_process_group("cpu:gloo,cuda:nccl" if gpus else "gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        runs = [
            train(Job(method=method, precision=precision, **job_args), strategy, rank, world)
            for method, precision in kinds
            for strategy in strategies
        ]
        if preset == "memory":
            launch.write_report(memory_report(runs, Job(**job_args), rank, world), rank)
        else:
            launch.write_report({"runs": runs}, rank)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    launch.exit_worker(cli_main())  # no interpreter teardown: see exit_worker
