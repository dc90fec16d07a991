"""Held-out check of the predicted peak: random small configurations, traced against predicted.

Each row is one configuration drawn at random (seeded): a family (the five formula families and
seven the dry run serves), its sizes (hidden 32-96, 1-8 layers, 1-4 heads, one or more KV heads,
vocabulary 100-512, tied or not), a shape (batch 1-4, sequence 5-64) and a job (fp32, pure bf16 or
bf16 autocast with an fp32 or bf16 LoRA base; full or LoRA with or without dropout; AdamW
single-tensor or foreach, SGD, Adafactor; checkpointing; gradient accumulation; eager or SDPA).
The model is built and trained for two real steps on CPU under the live-tensor trace
(:func:`labkit.memory.trace.trace_training`) and compared with
:func:`labkit.memory.peak.training_peak` by the tests' own ``measured_and_predicted``
(``tests/test_peak.py``). A row reads ``OK`` (same bytes and phase), ``NEAR``
(within 1%) or ``OFF`` (more than 1%), with the gap in bytes and percent; ``ERR`` where the
real model itself cannot run the random config (e.g. a partial rotary size transformers rejects).

    LABKIT_THREADS=1 python scripts/peak_sweep.py --seed 7 --n 100
    LABKIT_THREADS=1 python scripts/peak_sweep.py --seed 7 --n 100 --only 12,40   # those rows
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_peak import measured_and_predicted  # noqa: E402
from transformers import AutoConfig  # noqa: E402

FORMULA = ("llama", "mistral", "qwen2", "gpt2", "bloom")
DRY_RUN = ("qwen3", "gemma2", "gpt_neox", "phi3", "stablelm", "granite", "gemma")
TARGETS = {"gpt_neox": "query_key_value", "phi3": "qkv_proj"}


def config(rng: random.Random, family: str) -> Any:
    """A small random config of ``family``."""
    h, heads = rng.choice([32, 48, 64, 96]), rng.choice([2, 4])
    layers, vocab = rng.choice([1, 2, 3, 5, 8]), rng.choice([100, 257, 512])
    if family == "gpt2":
        return AutoConfig.for_model(
            "gpt2", n_embd=h, n_head=heads, n_layer=layers, vocab_size=vocab, n_positions=256
        )
    if family == "bloom":
        return AutoConfig.for_model(
            "bloom", hidden_size=h, n_head=heads, n_layer=layers, vocab_size=vocab
        )
    kw: dict[str, Any] = {
        "hidden_size": h,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "vocab_size": vocab,
        "intermediate_size": rng.choice([64, 128, 192]),
        "max_position_embeddings": 256,
    }
    if family != "gpt_neox":
        kw["num_key_value_heads"] = rng.choice([1, 2])
    if family == "phi3":
        kw["pad_token_id"] = 0
    if family in {"qwen3", "gemma2", "gemma"}:
        kw["head_dim"] = h // heads
    if family in {"llama", "qwen2"}:
        kw["tie_word_embeddings"] = rng.random() < 0.3
    return AutoConfig.for_model(family, **kw)


def draw(rng: random.Random) -> tuple[str, Any, int, int, str | None, dict[str, Any]]:
    """One random configuration: family, config, batch, sequence, optimizer impl, job."""
    family = rng.choice(FORMULA + DRY_RUN)
    c = config(rng, family)
    b, s = rng.choice([1, 2, 3, 4]), rng.choice([5, 8, 17, 40, 64])
    job: dict[str, Any] = {
        "precision": rng.choice(["fp32", "fp32", "bf16-mixed", "bf16"]),
        "method": rng.choice(["full", "lora"]),
        "optimizer": rng.choice(["adamw", "adamw", "sgd", "adafactor"]),
        "checkpointing": rng.random() < 0.4,
    }
    impl = rng.choice(["single", "foreach"]) if job["optimizer"] in {"adamw", "sgd"} else None
    job["attention"] = "eager" if family in {"gemma2", "bloom"} else rng.choice(["sdpa", "eager"])
    if family not in FORMULA:
        job["lora_targets"] = TARGETS.get(family, "q_proj,v_proj")
    if job["method"] == "lora" and job["precision"] == "bf16-mixed":
        job["base_dtype"] = rng.choice(["fp32", "bf16"])
    if job["method"] == "lora" and rng.random() < 0.3:
        job["lora_dropout"] = 0.1
    if rng.random() < 0.2:
        job["grad_accum"] = 2
    return family, c, b, s, impl, job


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=50, help="configurations to draw")
    p.add_argument("--only", help="comma-separated row numbers to run (all are drawn)")
    args = p.parse_args(argv)
    only = {int(x) for x in args.only.split(",")} if args.only else None
    rng = random.Random(args.seed)
    counts = {"OK": 0, "NEAR": 0, "OFF": 0, "ERR": 0}
    for i in range(args.n):
        family, c, b, s, impl, job = draw(rng)
        if only is not None and i not in only:
            continue
        size = f"L{c.num_hidden_layers} h{c.hidden_size} V{c.vocab_size}"
        what = f"{family} {size} b{b} s{s} {impl} {job}"
        try:
            top, pred = measured_and_predicted(c, b, s, impl=impl, **job)
        except Exception as err:  # a random config transformers itself cannot run
            counts["ERR"] += 1
            print(f"ERR  #{i:<3} {type(err).__name__}: {str(err)[:120]} | {what}", flush=True)
            continue
        gap = pred.peak - top.peak
        same = gap == 0 and pred.phase == top.peak_phase
        row = "OK" if same else "NEAR" if abs(gap) <= 0.01 * top.peak else "OFF"
        counts[row] += 1
        print(
            f"{row:4} #{i:<3} {gap:+9d} B {gap / top.peak:+.3%} {pred.phase}/{top.peak_phase} | "
            f"{what}",
            flush=True,
        )
    print(" ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
