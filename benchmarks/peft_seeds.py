"""Seed study behind the comparisons of notebooks 08, 09, 10 and 12 (zoo-llama, chat task).

Every configuration of :data:`GRID` trains with seeds 0, 1, 2 (the seed sets the adapter's init
and the data order) and is scored on all 84 held-out questions; the record keeps, per run, which
questions were right (so a notebook can read the exact match on its own first-N subset), the final
training loss, the validation loss and the steps. The record also stores the defaults it was made
with (``labkit.tuners.peft_methods.DEFAULTS`` / ``TRAIN_ARGS``, the Trainer defaults of ``labkit.training.finetune``, the
grid itself): ``tests/test_peft_seeds_record.py`` fails when any of them changed since, so the
notebooks never read a stale record.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peft_seeds.py --jobs 2   # ~55 min on a busy 2-core machine

Writes ``benchmarks/peft_seeds.json`` after every run (``"complete": false`` until the end).
Exits 1 if a course default improves the exact match by less than ``--min-gain`` on some seed.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labkit import cli  # noqa: E402
from labkit.studies import peft_seeds  # noqa: E402

RECORD = ROOT / "benchmarks" / "peft_seeds.json"


def _run(study: str, method: str, args: dict, seed: int) -> dict:
    """One training run in a worker process (one torch thread), scored on all 84 questions."""
    from labkit import hardware
    from labkit.models import zoo
    from labkit.training import finetune
    from labkit.tuners import peft_methods

    hardware.setup(threads=1)
    tok = zoo.load_tokenizer("zoo-llama")
    model = peft_methods.attach("zoo-llama", method, seed=seed)
    result = finetune.train(model, tok, seed=seed, data_seed=seed, disable_tqdm=True, **args)
    ev = finetune.evaluate_chat(model, tok, "test")
    correct = [
        int(p.strip() == r.strip())
        for p, r in zip(ev["predictions"], ev["references"], strict=True)
    ]
    return {
        "study": study,
        "method": method,
        "args": args,
        "seed": seed,
        "correct": correct,
        "final_loss": result.losses[-1],
        "val_loss": finetune.chat_loss(model, tok, "validation"),
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
    }


def _base_correct() -> list[int]:
    from labkit import hardware
    from labkit.models import zoo
    from labkit.training import finetune

    hardware.setup(threads=1)
    tok = zoo.load_tokenizer("zoo-llama")
    ev = finetune.evaluate_chat(zoo.load_model("zoo-llama"), tok, "test")
    return [
        int(p.strip() == r.strip())
        for p, r in zip(ev["predictions"], ev["references"], strict=True)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = cli.Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (1 thread each)")
    parser.add_argument("--studies", default=",".join(peft_seeds.studies()), help="comma list")
    parser.add_argument("--min-gain", type=float, default=0.3, help="required gain per seed")
    parser.add_argument("--out", default=str(RECORD), help="record to write")
    parser.add_argument("--resume", action="store_true", help="keep matching runs of --out")
    args = parser.parse_args(argv)
    studies = [s for s in args.studies.split(",") if s]
    for s in studies:
        if s not in peft_seeds.studies():
            raise SystemExit(f"unknown study {s!r}; accepted: {', '.join(peft_seeds.studies())}")

    from labkit import hardware

    record = {
        "complete": False,
        "date": time.strftime("%Y-%m-%d"),
        "env": hardware.env_report(),
        "defaults": peft_seeds.current_defaults(),
        "grid": peft_seeds.grid_as_json(),
        "seeds": list(range(args.seeds)),
        "base_correct": _base_correct(),
        "runs": [],
    }
    out = Path(args.out)
    todo = [
        (study, method, cfg, seed)
        for study in studies
        for method, cfg in peft_seeds.GRID[study]
        for seed in range(args.seeds)
    ]
    if args.resume and out.exists():
        old = json.loads(out.read_text())
        if old["defaults"] == record["defaults"]:
            keys = {(s, m, json.dumps(c, sort_keys=True), seed) for s, m, c, seed in todo}
            record["runs"] = [
                r
                for r in old["runs"]
                if (r["study"], r["method"], json.dumps(r["args"], sort_keys=True), r["seed"])
                in keys
            ]
            done = {
                (r["method"], json.dumps(r["args"], sort_keys=True), r["seed"])
                for r in record["runs"]
            }
            todo = [j for j in todo if (j[1], json.dumps(j[2], sort_keys=True), j[3]) not in done]
    n_kept = len(record["runs"])
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_run, *job) for job in todo]
        for fut in as_completed(futures):
            run = fut.result()
            record["runs"].append(run)
            record["runs"].sort(key=lambda r: (r["study"], r["method"], str(r["args"]), r["seed"]))
            out.write_text(json.dumps(record, indent=1) + "\n")
            em = sum(run["correct"]) / len(run["correct"])
            print(
                f"[{len(record['runs'])}/{len(todo) + n_kept} {time.perf_counter() - start:.0f}s] "
                f"{run['study']} {run['method']} {run['args']} seed {run['seed']}: EM {em:.2f}",
                file=sys.stderr,
                flush=True,
            )
    record["complete"] = True
    record["wall_seconds"] = round(time.perf_counter() - start)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(peft_seeds.markdown_table(record))
    failed = peft_seeds.defaults_below(record, args.min_gain)
    verdict = f"no ({', '.join(failed)})" if failed else "yes"
    print(
        f"\nevery course default improves exact match by >= {args.min_gain} on every seed: {verdict}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
