"""Seed study of catastrophic forgetting (notebook 16): every run of labkit.studies.forgetting.RUNS, seeds 0-2.

Each run fine-tunes the zoo Llama on the chat task for ``forgetting.EPOCHS`` epochs and measures,
before training and after every epoch, the task (chat validation loss) and what the model knew
before (loss on held-out corpus stories, a cloze probe of facts the chat task never trains); the
chat exact match is measured once at the end. The seed sets the adapter's init, the data order
and the replay sample. Writes ``benchmarks/forgetting_seeds.json`` with the settings it used
(``forgetting.load()`` refuses it when they differ from today's; ``--resume`` runs only the
missing runs) and prints a table.

    LABKIT_THREADS=1 .venv/bin/python benchmarks/forgetting_seeds.py --jobs 2 --replace   # or --resume
"""

from __future__ import annotations

import sys

from labkit.studies import forgetting, study


def table(record: dict) -> str:
    """Markdown: per run, final corpus loss / probe / chat loss / chat EM as mean ± half-range."""
    lines = [
        "| run | corpus loss (before -> after) | probe EM | chat val loss | chat EM | seeds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in forgetting.summary(record).items():
        lines.append(
            f"| {name} | {s['before']:.2f} -> {s['corpus_loss'][0]:.2f} ± {s['corpus_loss'][1]:.2f}"
            f" | {s['probe_em'][0]:.2f} ± {s['probe_em'][1]:.2f}"
            f" | {s['chat_loss'][0]:.3f} ± {s['chat_loss'][1]:.3f}"
            f" | {s['chat_em'][0]:.2f} ± {s['chat_em'][1]:.2f} | {s['seeds']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = forgetting.STUDY.parser(__doc__.splitlines()[0]).parse_args(argv)
    print(
        table(
            forgetting.STUDY.make(
                args.out, jobs=args.jobs, resume=args.resume, replace=args.replace
            )
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(study.script(main))
