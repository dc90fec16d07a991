"""LoRA rank and alpha at equal steps, over three seeds (the record notebook 11 reads).

Every point of ``labkit.studies.lora_rank.GRID`` (rank 1 vs 8 at alpha/r = 2, then alpha at r = 8)
trains from ``labkit.tuners.peft_methods.TRAIN_ARGS["lora"]`` (same epochs, so the same steps) with seeds 1 and 2
(the notebook trains seed 0 itself), and is scored on all 84 held-out questions (which ones are
answered exactly, so any first-N exact match can be recomputed) and by the validation answer loss.
Writes ``benchmarks/lora_rank_alpha.json`` and prints a Markdown table.
``tests/test_lora_sweep.py`` fails when the record no longer matches the grid or the training
arguments.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lora_rank_alpha.py    # ~2 min on 2 quiet CPU cores
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict

from labkit import cli, hardware
from labkit.models import zoo
from labkit.studies import lora_rank


def main(argv: list[str] | None = None) -> int:
    parser = cli.Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(lora_rank.RECORD), help="where to write the record")
    args = parser.parse_args(argv)

    hardware.setup()
    hardware.quiet_logs()
    tok = zoo.load_tokenizer(lora_rank.MODEL_ID)
    points = []
    for r, alpha in lora_rank.GRID:
        for seed in lora_rank.SEEDS:
            start = time.perf_counter()
            p = lora_rank.train_point(tok, r, alpha, seed=seed)
            points.append(asdict(p))
            print(
                f"r={r:<3} alpha={alpha:<4} seed {seed}: EM {p.exact_match:.2f}, "
                f"val loss {p.val_loss:.3f} ({time.perf_counter() - start:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    record = {
        "config": lora_rank.record_config(),
        "environment": hardware.env_report().splitlines()[0],
        "date": time.strftime("%Y-%m-%d"),
        "points": points,
    }
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print("| r | alpha | alpha/r | EM min | EM mean | EM max | val loss mean |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in lora_rank.spread(record):
        print(
            f"| {row['r']} | {row['alpha']} | {row['scale']:g} | {row['em_min']:.2f} | "
            f"{row['em_mean']:.2f} | {row['em_max']:.2f} | {row['val_mean']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
