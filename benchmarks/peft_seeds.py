"""Seed study of the PEFT training defaults (labkit.peft_methods.TRAIN_ARGS) on the zoo chat task.

Each method trains from its defaults with seeds 0, 1, 2 (the seed sets the adapter's init and the
data order) and is scored on all 84 held-out questions (exact match; the untuned base scores 0).
``--contrast`` adds the same epochs with the Trainer's default linear decay for the methods whose
default is a constant learning rate, to show why. Prints a Markdown table; exits 1 if a default
improves the exact match by less than ``--min-gain`` on some seed.

    .venv/bin/python benchmarks/peft_seeds.py --contrast      # ~12 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
import time

from labkit import hardware, training, zoo
from labkit import peft_methods as lp


def run(method: str, args: dict, seed: int, tok) -> tuple[float, float]:
    """(exact match on all held-out questions, training seconds) of one training run."""
    model = lp.attach("zoo-llama", method, seed=seed)
    result = training.train(model, tok, seed=seed, data_seed=seed, disable_tqdm=True, **args)
    return training.evaluate_chat(model, tok, "test")["exact_match"], result.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(lp.PEFT_METHODS), help="comma list")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--contrast", action="store_true", help="also the linear-decay schedule")
    parser.add_argument("--min-gain", type=float, default=0.3, help="required gain on every seed")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(lp.PEFT_METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; accepted: {', '.join(lp.PEFT_METHODS)}")

    hardware.setup()
    hardware.quiet_logs()
    tok = zoo.load_tokenizer("zoo-llama")
    base = training.evaluate_chat(zoo.load_model("zoo-llama"), tok, "test")["exact_match"]
    seeds = range(args.seeds)
    rows, failed = [], []
    for method in methods:
        variants = [("default", lp.TRAIN_ARGS[method])]
        if args.contrast and lp.TRAIN_ARGS[method].get("lr_scheduler_type") == "constant":
            variants.append(
                ("linear decay", {**lp.TRAIN_ARGS[method], "lr_scheduler_type": "linear"})
            )
        for label, train_args in variants:
            scores, seconds = zip(*(run(method, train_args, s, tok) for s in seeds), strict=True)
            if label == "default" and min(scores) - base < args.min_gain:
                failed.append(method)
            epochs, lr = train_args["num_train_epochs"], train_args["learning_rate"]
            cells = " | ".join(f"{x:.2f}" for x in scores)
            rows.append(
                f"| {method} | {label} | {epochs} | {lr:g} | {cells} | {max(seconds):.0f} |"
            )
            print(rows[-1], file=sys.stderr, flush=True)

    print(f"{hardware.env_report()}\n{time.strftime('%Y-%m-%d')}, untuned base {base:.2f}\n")
    seed_cols = " | ".join(f"seed {s}" for s in seeds)
    print(f"| method | schedule | epochs | lr | {seed_cols} | max train s |")
    print("|---|---|---:|---:|" + "---:|" * (len(seeds) + 1))
    print("\n".join(rows))
    verdict = f"no ({', '.join(failed)})" if failed else "yes"
    print(f"\nevery default improves exact match by >= {args.min_gain} on every seed: {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
