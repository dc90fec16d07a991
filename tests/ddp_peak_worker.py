"""A worker for tests/test_peak.py: one rank of DDP on gloo, its training steps traced.

Run by ``labkit.distributed.launch.run("tests.ddp_peak_worker", 2, [model, batch, seq,
bucket_view])``: the model is wrapped in ``DistributedDataParallel`` inside the live-tensor
tracker (so the gradient buckets DDP allocates are counted), two AdamW steps are traced, and each
rank reports the later step's peak and phase.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_peak import build, config_of, optimizer  # noqa: E402

from labkit.distributed.launch import exit_worker, write_report  # noqa: E402
from labkit.memory import trace  # noqa: E402


class _Kwargs(torch.nn.Module):
    """DDP's module called with keywords, as trace_training calls a model."""

    def __init__(self, ddp: DistributedDataParallel) -> None:
        super().__init__()
        self.ddp = ddp

    def forward(self, **kwargs):
        return self.ddp(**kwargs)


if __name__ == "__main__":
    name, b, s, view = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "view"
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    config = config_of(name)
    model = build(config, {"precision": "fp32"})
    tracker = trace.StepTracker()
    with tracker:  # DDP's buckets are made here, before the first step
        ddp = DistributedDataParallel(model, gradient_as_bucket_view=view)
    ids = torch.randint(3, config.vocab_size, (b, s), generator=torch.Generator().manual_seed(rank))
    opt = optimizer(model, "adamw", "single")
    steps = trace.trace_training(_Kwargs(ddp), opt, ids, steps=2, tracker=tracker)
    write_report({"peak": steps[-1].peak, "phase": steps[-1].peak_phase}, rank)
    dist.barrier()
    dist.destroy_process_group()
    exit_worker(0)  # no interpreter teardown (labkit.distributed.launch.exit_worker)
