"""Each lever's extra time per training step, measured on CPU: the record behind
``labkit.fit.plan.COSTS`` (issue 24).

The job is notebook 18's (``labkit.memory.lever_runs.build``: the course model ``zoo-llama``,
full fine-tuning, fp32, AdamW), at a shape where the matmuls dominate the step (8 x 256 tokens;
the record keeps the baseline's matmul share, from torch's profiler). Every lever runs in
interleaved rounds (``labkit.inference.bench.interleaved``: one step of every lever in turn,
timed on the thread's CPU clock with torch on one thread), so a busy spell of the shared machine
hits all alike; each round gives each lever's ratio to its reference step of the same round,
and the record keeps the median and the range over the rounds. References: the fp32 baseline,
except ``pure_bf16``, compared with the same step under bf16 autocast (the planner's jobs are
bf16-mixed, and pure bf16 replaces autocast; against fp32 it would time this CPU's bf16 kernels,
not the lever). GaLore's ratio adds its SVD amortised over its 200-step gap (a step with an SVD
each step is timed too). Levers that cannot run on a CPU keep an argued figure, marked
``"measured": false``. Writes benchmarks/lever_costs.json:

    LABKIT_THREADS=1 .venv/bin/python benchmarks/lever_costs.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from labkit.fit import plan
from labkit.inference import bench
from labkit.memory import lever_runs, levers

BATCH, SEQ = 8, 256
ROUNDS = 25
GALORE_GAP = 200  # levers.galore_optimizer's default update gap
#: The planner's levers that have no CPU run: their argued cost (a fraction of a step) and why.
ARGUED = {
    "offload_activations": (
        0.40,
        "GPU only (activations copied to pinned host memory); argued: checkpointing's recompute "
        "plus copies partly hidden behind compute",
    ),
}
#: Each measured lever -> the run its time is divided by.
REFERENCE = {
    "chunked_loss": "baseline",
    "checkpointing": "baseline",
    "checkpoint_every_2": "baseline",
    "optimizer_in_backward": "baseline",
    "adamw8bit": "baseline",
    "adafactor": "baseline",
    "galore": "baseline",
    "pure_bf16": "baseline_bf16_autocast",
}
#: The baseline step must spend at least this share of its CPU time in matmuls + attention.
MIN_MATMUL_SHARE = 0.5
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def _step(job: tuple[Any, Any, Any], x: torch.Tensor, autocast: bool = False) -> None:
    model, opt, loss_fn = job
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = loss_fn(model, x) if loss_fn else model(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def tasks(x: torch.Tensor) -> dict[str, Callable[[], float]]:
    """One timed step (thread clock) of every run: the baselines, each lever, GaLore with an SVD
    every step."""
    jobs = {name: lever_runs.build(name) for name in ("baseline", *REFERENCE)}
    jobs["baseline_bf16_autocast"] = lever_runs.build("baseline")
    model = lever_runs.build("galore")[0]
    svd = levers.galore_optimizer(model, rank=4, update_gap=1, lr=lever_runs.LR)
    jobs["galore_svd_every_step"] = (model, svd, None)

    def timed(name: str) -> Callable[[], float]:
        auto = name == "baseline_bf16_autocast"
        return lambda: bench.seconds(lambda: _step(jobs[name], x, auto), clock_kind="thread")

    return {name: timed(name) for name in jobs}


def matmul_share(x: torch.Tensor) -> dict[str, float]:
    """Share of the baseline step's CPU time (self time, torch's profiler) in matmuls, without
    and with the attention kernel (its matmuls and softmax in one op)."""
    job = lever_runs.build("baseline")
    _step(job, x)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _step(job, x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key in MATMULS)
    attn = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
    return {"matmuls": round(mm / total, 3), "matmuls_and_attention": round((mm + attn) / total, 3)}


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def summarise(times: dict[str, list[float]]) -> dict[str, Any]:
    """Each measured lever's ratio to its reference, round by round, as median and range."""
    out: dict[str, Any] = {}
    for name, ref in REFERENCE.items():
        mine = times[name]
        if name == "galore":  # + the SVD's extra time, spread over the gap
            mine = [
                t + (s - t) / GALORE_GAP
                for t, s in zip(mine, times["galore_svd_every_step"], strict=True)
            ]
        ratios = [a / b for a, b in zip(mine, times[ref], strict=True)]
        out[name] = {
            "measured": True,
            "against": ref,
            "ratio": _spread(ratios),
            "seconds": _spread(mine),
            "ratios": [round(r, 4) for r in ratios],
        }
    for name, (cost, why) in ARGUED.items():
        out[name] = {"measured": False, "cost": cost, "why": why}
    return out


README = Path(__file__).with_name("README.md")
BLOCK_START, BLOCK_END = "<!-- lever-costs:start -->", "<!-- lever-costs:end -->"


def readme_block(record: dict[str, Any], costs: dict[str, float]) -> str:
    """The record as benchmarks/README.md shows it (between the lever-costs markers): when, on
    what, the baseline step, one row per lever, how many rounds each was slower, and the cost
    the planner reads from it (``costs``: :func:`labkit.fit.plan.load_costs` of the record)."""
    v, base = record["versions"], record["baseline_seconds"]
    share, rounds = record["baseline_matmul_share"], record["rounds"]
    lines = [
        f"Recorded {record['date'][:10]} on a {record['machine']['cores']}-core "
        f"{record['machine']['cpu']} machine (load average {record['load_average']['before'][0]:.1f} "
        f"before, {record['load_average']['after'][0]:.1f} after), torch {v['torch']}, "
        f"transformers {v['transformers']}, bitsandbytes {v['bitsandbytes']}, galore-torch "
        f"{v['galore-torch']}, {rounds} rounds; baseline step {base['median']:.3f} s median "
        f"(thread clock), {share['matmuls']:.2f} of it in matmuls "
        f"({share['matmuls_and_attention']:.2f} with attention):",
        "",
        "| lever | against | extra time (median) | range over rounds | slower in | `plan.COSTS` |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, rec in record["levers"].items():
        if not rec["measured"]:
            lines.append(f"| {name} | not measured | | | | {costs[name]:.2f} (argued) |")
            continue
        r, slower = rec["ratio"], sum(x > 1 for x in rec["ratios"])
        lines.append(
            f"| {name} | {rec['against'].replace('_', ' ')} | {r['median'] - 1:+.1%} | "
            f"{r['min'] - 1:+.1%}..{r['max'] - 1:+.1%} | {slower} of {len(rec['ratios'])} | "
            f"{costs[name]:.4f} |"
        )
    return "\n".join(lines)


def write_readme(record_path: Path, readme: Path = README) -> None:
    """Put :func:`readme_block` of the record at ``record_path`` between the markers of
    ``readme`` (they must be there)."""
    record = json.loads(Path(record_path).read_text())
    block = readme_block(record, plan.load_costs(Path(record_path)))
    text = readme.read_text()
    head, found, rest = text.partition(BLOCK_START)
    _, found_end, tail = rest.partition(BLOCK_END)
    if not (found and found_end):
        raise SystemExit(f"{readme} has no {BLOCK_START} ... {BLOCK_END} block")
    readme.write_text(f"{head}{BLOCK_START}\n{block}\n{BLOCK_END}{tail}")


def _machine() -> dict[str, Any]:
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        model = names[0] if names else model
    return {"cpu": model, "cores": os.cpu_count(), "system": platform.platform()}


def _versions() -> dict[str, str]:
    names = ("torch", "transformers", "bitsandbytes", "galore-torch")
    return {"python": platform.python_version(), **{n: metadata.version(n) for n in names}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--out", default=str(Path(__file__).with_name("lever_costs.json")))
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()
    with bench.threads(1):
        x = lever_runs.ids(BATCH, SEQ)
        share = matmul_share(x)
        print(f"baseline step's CPU time in matmuls: {share}")
        times = bench.interleaved(tasks(x), rounds=args.rounds, warmup=1)
    costs = summarise(times)
    record = {
        "benchmark": "lever_costs",
        "command": "LABKIT_THREADS=1 .venv/bin/python benchmarks/lever_costs.py"
        + (f" --rounds {args.rounds}" if args.rounds != ROUNDS else ""),
        "date": started.isoformat(timespec="seconds"),
        "machine": _machine(),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "versions": _versions(),
        "job": {
            "model": lever_runs.MODEL,
            "method": "full",
            "dtype": "fp32",
            "optimizer": "AdamW (torch, single-tensor)",
            "batch": BATCH,
            "seq": SEQ,
            "galore_rank": 4,
            "galore_update_gap": GALORE_GAP,
        },
        "threads": 1,
        "clock": "thread (CPU time of the calling thread)",
        "rounds": args.rounds,
        "warmup_rounds": 1,
        "baseline_matmul_share": share,
        "min_matmul_share": MIN_MATMUL_SHARE,
        "baseline_seconds": _spread(times["baseline"]),
        "baseline_bf16_autocast_seconds": _spread(times["baseline_bf16_autocast"]),
        "levers": costs,
    }
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    write_readme(Path(args.out))  # the README's table is this record's
    print(f"{'lever':22} {'extra time (median)':>19}  range over {args.rounds} rounds")
    for name, rec in costs.items():
        if rec["measured"]:
            r = rec["ratio"]
            print(
                f"{name:22} {r['median'] - 1:+19.1%}  {r['min'] - 1:+.1%}..{r['max'] - 1:+.1%}"
                f"  (vs {rec['against']})"
            )
        else:
            print(f"{name:22} {rec['cost']:+19.1%}  not measured: {rec['why']}")
    if share["matmuls_and_attention"] < MIN_MATMUL_SHARE:
        print(f"the baseline step is not compute-bound (matmul share < {MIN_MATMUL_SHARE})")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
