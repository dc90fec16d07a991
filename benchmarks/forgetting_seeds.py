"""Seed study of catastrophic forgetting (notebook 16): every run of labkit.training.forgetting.RUNS, seeds 0-2.

Each run fine-tunes the zoo Llama on the chat task for ``forgetting.EPOCHS`` epochs and measures,
before training and after every epoch, the task (chat validation loss) and what the model knew
before (loss on held-out corpus stories, a cloze probe of facts the chat task never trains); the
chat exact match is measured once at the end. The seed sets the adapter's init, the data order
and the replay sample. Writes ``benchmarks/forgetting_seeds.json`` (with the settings it used:
``tests/test_forgetting.py`` fails when they differ from labkit's defaults) and prints a table.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/forgetting_seeds.py --jobs 2 [--resume]
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from labkit import cli, hardware
from labkit.models import zoo
from labkit.training import forgetting

RECORD = Path(__file__).with_name("forgetting_seeds.json")


def one(name: str, seed: int, partial: str) -> dict:
    """Train run ``name`` with ``seed`` on one thread; append its record to ``partial``."""
    hardware.setup(threads=1)
    hardware.quiet_logs()
    tok = zoo.load_tokenizer("zoo-llama")
    result = forgetting.run(name, tok, forgetting.Probe.default(tok), seed=seed)
    row = {"run": name, "seed": seed, **result.record()}
    print(
        f"{name:<18} seed {seed}: corpus loss {row['history'][0]['corpus_loss']:.3f} -> "
        f"{row['history'][-1]['corpus_loss']:.3f}, chat EM {row['chat_em']:.2f}, "
        f"{row['seconds']:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    with open(partial, "a") as f:  # one line per finished run: a crash loses only the current ones
        f.write(json.dumps(row) + "\n")
    return row


def table(record: dict) -> str:
    """Markdown: per run, final corpus loss / probe / chat loss / chat EM as mean ± spread."""
    lines = [
        "| run | corpus loss (before -> after) | probe EM | chat val loss | chat EM | seeds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    summary = forgetting.summarize(record)
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['before']:.2f} -> {s['corpus_loss'][0]:.2f} ± {s['corpus_loss'][1]:.2f}"
            f" | {s['probe_em'][0]:.2f} ± {s['probe_em'][1]:.2f}"
            f" | {s['chat_loss'][0]:.3f} ± {s['chat_loss'][1]:.3f}"
            f" | {s['chat_em'][0]:.2f} ± {s['chat_em'][1]:.2f} | {s['seeds']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = cli.Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--runs", default=",".join(forgetting.RUNS), help="comma list")
    parser.add_argument("--jobs", type=int, default=1, help="processes (each uses 1 thread)")
    parser.add_argument("--out", default=str(RECORD), help="where to write the JSON record")
    parser.add_argument(
        "--resume", action="store_true", help="keep the runs already in OUT.partial.jsonl"
    )
    args = parser.parse_args(argv)
    names = [n for n in args.runs.split(",") if n]
    for n in names:
        if n not in forgetting.RUNS:
            parser.error(f"unknown run {n!r}; accepted: {', '.join(forgetting.RUNS)}")
    start = time.perf_counter()
    partial = Path(args.out).with_suffix(".partial.jsonl")
    done = []
    if args.resume and partial.is_file():
        done = [json.loads(line) for line in partial.read_text().splitlines() if line.strip()]
    elif partial.is_file():
        partial.unlink()
    have = {(r["run"], r["seed"]) for r in done}
    jobs = [(n, s, str(partial)) for s in range(args.seeds) for n in names if (n, s) not in have]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = done + list(pool.map(one, *zip(*jobs, strict=True))) if jobs else done
    order = {(n, s): i for i, (n, s) in enumerate((n, s) for s in range(args.seeds) for n in names)}
    rows.sort(key=lambda r: order[(r["run"], r["seed"])])
    record = {
        "settings": forgetting.settings(fast=True),
        "environment": hardware.env_report(),
        "threads_per_run": 1,
        "date": time.strftime("%Y-%m-%d"),
        "wall_seconds": round(time.perf_counter() - start),
        "runs": rows,
    }
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    partial.unlink(missing_ok=True)
    print(table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
