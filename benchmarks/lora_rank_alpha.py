"""LoRA rank and alpha at equal steps, over three seeds (the record notebook 11 reads).

Every point of ``labkit.studies.lora_rank.GRID`` (rank 1 vs 8 at alpha/r = 2, then alpha at r = 8)
and of ``RSLORA_GRID`` (rank 1 vs 8 at alpha 16 with rsLoRA's alpha/sqrt(r))
trains from ``labkit.tuners.peft_methods.TRAIN_ARGS["lora"]`` (same epochs, so the same steps) with
seeds 1 and 2 (the notebook trains seed 0 itself), and is scored on all 84 held-out questions
(which ones are answered exactly, so any first-N exact match can be recomputed) and by the
validation answer loss, and by the train-split answer loss after the last step (the
generalisation gap's denominator). Writes ``benchmarks/lora_rank_alpha.json`` (``--resume`` runs only the
missing points, ``--replace`` starts afresh) and prints a Markdown table; ``lora_rank.load()`` refuses the record when the
grid, the seeds or the training arguments changed since.

    LABKIT_THREADS=1 .venv/bin/python benchmarks/lora_rank_alpha.py --jobs 2 --replace   # ~3 min on 2 quiet CPU cores
"""

from __future__ import annotations

import sys

from labkit.studies import lora_rank, study


def main(argv: list[str] | None = None) -> int:
    args = lora_rank.STUDY.parser(__doc__.splitlines()[0]).parse_args(argv)
    record = lora_rank.STUDY.make(
        args.out, jobs=args.jobs, resume=args.resume, replace=args.replace
    )
    print("| r | alpha | scale s | EM min | EM mean | EM max | val loss mean |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in lora_rank.summary(record):
        rule = "alpha/sqrt(r)" if row["rslora"] else "alpha/r"
        print(
            f"| {row['r']} | {row['alpha']} | {row['scale']:.3g} ({rule}) | {row['em_min']:.2f} | "
            f"{row['em_mean']:.2f} | {row['em_max']:.2f} | {row['val_mean']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(study.script(main))
