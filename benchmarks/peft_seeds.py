"""Seed study behind the comparisons of notebooks 08, 09, 10 and 12 (zoo-llama, chat task).

Every configuration of ``labkit.studies.peft_seeds.GRID`` trains with seeds 0, 1, 2 (the seed sets
the adapter's init and the data order) and is scored on all 84 held-out questions; the record
keeps, per run, which questions were right (so a notebook can read the exact match on its own
first-N subset), the final training loss, the validation loss and the steps, and the untuned
base model's answers (``baseline``). It also stores what it was made with (the grid, the seeds,
``labkit.tuners.peft_methods.DEFAULTS`` / ``TRAIN_ARGS``, the Trainer defaults of
``labkit.training.finetune``, a hash of the chat data): ``peft_seeds.load()`` refuses the record
when any of them changed since, so the notebooks never read a stale record.

    LABKIT_THREADS=1 .venv/bin/python benchmarks/peft_seeds.py --jobs 2 --replace   # ~1 h on a busy 2-core machine

Writes ``benchmarks/peft_seeds.json`` after every run (``"complete": false`` until the end;
``--resume`` runs only the missing ones, ``--replace`` starts afresh). Exits 1 if a course default improves the exact match
by less than ``--min-gain`` on some seed.
"""

from __future__ import annotations

import sys

from labkit.studies import peft_seeds, study


def main(argv: list[str] | None = None) -> int:
    parser = peft_seeds.STUDY.parser(__doc__.splitlines()[0])
    parser.add_argument("--min-gain", type=float, default=0.3, help="required gain per seed")
    args = parser.parse_args(argv)
    record = peft_seeds.STUDY.make(
        args.out, jobs=args.jobs, resume=args.resume, replace=args.replace
    )
    print(peft_seeds.markdown_table(record))
    failed = peft_seeds.defaults_below(record, args.min_gain)
    verdict = f"no ({', '.join(failed)})" if failed else "yes"
    print(
        f"\nevery course default improves exact match by >= {args.min_gain} on every seed: {verdict}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(study.script(main))
