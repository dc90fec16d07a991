"""Two processes on CPU: per-rank parameter + optimizer bytes, replicated (DDP) vs fully sharded.

Run from a notebook with ``labkit.distributed.launch.run("labkit.distributed.demo", 2, [MODEL])`` (torchrun,
gloo backend, no GPU). Each rank builds the same model, takes one real AdamW step replicated (what DDP
keeps per GPU) and one with FSDP2's ``fully_shard`` (ZeRO-3: parameters, gradients and optimizer
state split across ranks), and reads the bytes of its own tensors (``DTensor.to_local()``). Rank 0
reports both measurements and :func:`labkit.memory.estimator.sharded`'s figures (:func:`labkit.distributed.launch.write_report`).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def _bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, int]:
    """This rank's parameter and optimizer bytes (step counters included), own shard only."""
    from labkit.distributed.parallel import local_bytes

    held = local_bytes(model, opt)
    return {"weights": held["weights"], "optimizer": held["optimizer"] + held["optimizer_counters"]}


def _step(model: torch.nn.Module, ids: torch.Tensor) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    return opt


def cli_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = argv[0] if argv else "tiny-llama"
    from torch.distributed.fsdp import fully_shard

    from labkit import hardware
    from labkit.distributed.launch import write_report
    from labkit.memory import estimator
    from labkit.models import zoo

    hardware.quiet_logs()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ids = torch.randint(3, 1000, (2, 16), generator=torch.Generator().manual_seed(rank))

    replicated = zoo.load_model(name, seed=0).train()
    rep = _bytes(replicated, _step(replicated, ids))

    sharded = zoo.load_model(name, seed=0).train()
    for layer in sharded.model.layers if hasattr(sharded, "model") else sharded.transformer.h:
        fully_shard(layer)
    fully_shard(sharded)
    shd = _bytes(sharded, _step(sharded, ids))

    gathered: list[dict] = [{} for _ in range(world)]
    dist.all_gather_object(gathered, {"replicated": rep, "sharded": shd})
    report: dict = {"model": name, "world_size": world, "rank": rank, "measured": gathered}
    if rank == 0:
        est = estimator.training_memory(zoo.load_config(name), precision="fp32", batch=2, seq=16)
        ddp, z3 = estimator.sharded(est, world, "ddp"), estimator.sharded(est, world, "fsdp")
        report["estimate"] = {
            "ddp": {"weights": ddp.weights, "optimizer": ddp.optimizer},
            "fsdp": {"weights": z3.weights, "optimizer": z3.optimizer},
        }
    write_report(report, rank)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(cli_main())
