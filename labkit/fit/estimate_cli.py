"""``python -m labkit estimate MODEL [options] [--json]``: memory (and GPUs) for training or inference.

MODEL is a config.json path, a model folder, a catalog or zoo name, or (online) a hub id. Only the
config is read. Any causal LM transformers can build is estimated: the five formula families
(Llama, Mistral, Qwen2, GPT-2, BLOOM) by the derivation, any other (Mixtral, Gemma, Phi-3, Qwen3,
GPT-NeoX...) by a dry run on fake tensors; ``activations_from`` says which. Inference reports the
prefill's peak (a dry run) besides weights + KV cache + logits. Every total names its precision regime; ``--method lora`` keeps the frozen base in
bf16 as practitioners do (``--base-dtype fp32`` for the fp32-base figure). Bad input is one line
on stderr with exit status 2 (see :mod:`labkit.cli`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from labkit import LabkitError
from labkit.cli import Parser
from labkit.memory import activations, estimator
from labkit.models import architecture

#: Keys of the ``--json`` object (bytes unless the name is a count; ``gpus_needed`` is null when
#: even 4096 GPUs fully sharded are not enough, never 0, which would read as "needs none").
JSON_KEYS = (
    "parameters",
    "trainable_parameters",
    "weights",
    "gradients",
    "optimizer",
    "activations",
    "logits",
    "kv_cache",
    "total",
    "gpus_needed",
    "regime",
    "activations_from",
)


def _number(convert, accepted, what: str):
    """An argparse ``type``: ``convert`` the text, keep it if ``accepted``, else say ``what``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not accepted(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v > 0, "a positive integer")
_nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: v > 0, "a positive number")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m labkit estimate", description=__doc__.splitlines()[0])
    p.add_argument("model", help="config.json path, model folder, zoo/catalog name or hub id")
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--method", choices=architecture.TRAINING_METHODS, default="full")
    p.add_argument("--precision", choices=estimator.PRECISIONS, default="bf16-mixed")
    p.add_argument("--optimizer", choices=estimator.OPTIMIZERS, default="adamw")
    p.add_argument("--batch", type=_positive_int, default=1, help="micro-batch per GPU")
    p.add_argument("--seq", type=_positive_int, default=512, help="sequence / context length")
    p.add_argument("--grad-accum", type=_positive_int, default=1)
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on")
    p.add_argument("--attention", choices=activations.ATTENTIONS, default="sdpa")
    p.add_argument(
        "--base-dtype",
        choices=("bf16", "fp16", "fp32"),
        default=None,
        help="LoRA's frozen base (default: bf16, as in practice; fp32 with --precision fp32)",
    )
    p.add_argument("--lora-r", type=_positive_int, default=None, help="with --method lora (8)")
    p.add_argument(
        "--lora-targets",
        default=None,
        help="with --method lora: comma list, all-linear, or default (peft's default)",
    )
    p.add_argument("--frozen-layers", type=_nonneg_int, default=0, help="with --method frozen")
    p.add_argument(
        "--dtype", choices=estimator.WEIGHT_DTYPES, default=None, help="--mode infer weights (bf16)"
    )
    p.add_argument("--gpus", type=_positive_int, default=1, help="data-parallel GPUs")
    p.add_argument("--zero", choices=("0", "1", "2", "3"), default="0", help="ZeRO stage (0 = DDP)")
    p.add_argument("--gpu-memory", type=_positive_float, default=80.0, help="GiB per GPU")
    p.add_argument(
        "--card",
        help="with --mode infer: predicted decode speed on this GPU (names: labkit.inference.roofline.CARDS)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _load(model: str):
    """The config of MODEL: a ``.json`` file is read as a dict by :func:`labkit.models.zoo.read_config_file`
    (zoo's one-line messages for a damaged file; only the numbers are needed, no transformers
    validation), anything else by :func:`labkit.models.zoo.load_config`."""
    from labkit.models import zoo

    path = Path(model)
    if path.suffix == ".json" or path.name == "config.json":
        if not path.is_file():
            raise LabkitError(
                f"config file {model!r} does not exist; give a config.json path, folder or name"
            )
        return zoo.read_config_file(path)
    return zoo.load_config(model)


def _check_options(args: argparse.Namespace) -> None:
    """Refuse options that the chosen mode or method ignores (they would change nothing, silently),
    then fill in their defaults."""
    lora = args.mode == "train" and args.method in {"lora", "qlora"}
    given = [
        f
        for f, v in (("--lora-targets", args.lora_targets), ("--lora-r", args.lora_r))
        if v is not None
    ]
    if given and not lora:
        raise LabkitError(
            f"{' and '.join(given)} apply to --method lora or qlora (with --mode train)"
        )
    if args.dtype is not None and args.mode != "infer":
        raise LabkitError(
            "--dtype sets the weights of --mode infer; for training use --precision or --method"
        )
    args.lora_r = 8 if args.lora_r is None else args.lora_r
    args.lora_targets = args.lora_targets or "default"
    args.dtype = args.dtype or "bf16"


def _base_dtype(args: argparse.Namespace) -> str | None:
    """LoRA's base: bf16 unless asked (practice loads the frozen base in 16 bit)."""
    if args.method != "lora":
        if args.base_dtype is not None:
            raise LabkitError("--base-dtype applies to --method lora (QLoRA's base is NF4)")
        return None
    return args.base_dtype or ("fp32" if args.precision == "fp32" else "bf16")


def estimate(args: argparse.Namespace) -> estimator.Breakdown:
    """The breakdown for parsed arguments (per GPU, after sharding), with ``gpus_needed`` set."""
    _check_options(args)
    config = _load(args.model)
    if estimator.is_formula_family(config):
        config = architecture.shape_of(config) if args.mode == "train" else config
    if args.mode == "infer":
        b = estimator.inference_memory(
            config,
            dtype=args.dtype,
            batch=args.batch,
            context=args.seq,
            prefill=True,
            attention=args.attention,
        )
    else:
        b = estimator.training_memory(
            config,
            method=args.method,
            precision=args.precision,
            optimizer=args.optimizer,
            batch=args.batch,
            seq=args.seq,
            grad_accum=args.grad_accum,
            checkpointing=args.checkpointing,
            attention=args.attention,
            lora_r=args.lora_r,
            lora_targets=args.lora_targets,
            frozen_layers=args.frozen_layers,
            base_dtype=_base_dtype(args),
        )
    strategy = "ddp" if args.zero == "0" else f"zero{args.zero}"
    per_gpu = estimator.sharded(b, args.gpus, strategy)
    try:
        per_gpu.gpus_needed = estimator.gpus_needed(b, args.gpu_memory * 2**30, "zero3")
    except LabkitError:
        per_gpu.gpus_needed = None  # does not fit even fully sharded (0 would read as "none")
    per_gpu.details["rule_of_thumb"] = (
        estimator.rule_inference_2x(b.parameters)
        if args.mode == "infer"
        else estimator.rule_training_8x(b.parameters)
    )
    if args.mode == "infer":
        per_gpu.details["regime"] = f"inference, {args.dtype} weights"
        per_gpu.details["activations_from"] = "dry-run (prefill peak)"
    else:
        per_gpu.details["rule_mixed_adamw"] = estimator.rule_training_mixed_adamw(b.parameters)
    return per_gpu


def decode_prediction(args: argparse.Namespace) -> dict[str, Any] | None:
    """The roofline decode prediction for ``--card`` (None without it); inference only."""
    if args.card is None:
        return None
    if args.mode != "infer":
        raise LabkitError("--card applies to --mode infer (it predicts decode speed)")
    from labkit.inference import roofline  # imports torch: only when asked

    return roofline.predict(
        _load(args.model), args.card, dtype=args.dtype, batch=args.batch, context=args.seq
    )


def _gib(n: float) -> str:
    return f"{n / 2**30:10.3f} GiB"


def table(
    b: estimator.Breakdown, args: argparse.Namespace, decode: dict[str, Any] | None = None
) -> str:
    rows = [
        ("parameters", f"{b.parameters:,}"),
        ("trainable parameters", f"{b.trainable_parameters:,}"),
    ]
    for key in ("weights", "gradients", "optimizer", "activations", "logits", "kv_cache"):
        rows.append((key.replace("_", " "), _gib(getattr(b, key))))
    transient = (
        "prefill beyond KV cache + logits" if args.mode == "infer" else "logits held, loss grad"
    )
    rows.append((f"transient ({transient})", _gib(b.transient)))
    rows.append(("activations from", b.details["activations_from"]))
    rows.append((f"total per GPU ({b.details['regime']})", _gib(b.total)))
    rule = b.details["rule_of_thumb"]
    name = "2x the fp16 weights" if args.mode == "infer" else "8x the fp16 weights"
    rows.append((f"rule of thumb ({name})", _gib(rule)))
    if args.mode == "train":
        rule16 = "mixed-precision AdamW, 2+2+12 = 16 B/param, no activations"
        rows.append((f"rule of thumb ({rule16})", _gib(b.details["rule_mixed_adamw"])))
    if args.mode == "train":  # ZeRO-3 sharding is a training notion: no such row for serving
        need = b.gpus_needed or f"more than 4096 x {args.gpu_memory:g} GiB"
        rows.append((f"GPUs needed ({args.gpu_memory:g} GiB, ZeRO-3, nodes of 8)", str(need)))
    if decode is not None:
        from labkit.inference import roofline

        line = roofline.prediction_line(decode, batch=args.batch, context=args.seq)
        rows.append(("predicted decode (roofline)", line))
    width = max(len(r[0]) for r in rows)
    head = f"{args.model}: {args.mode}"
    if args.mode == "train":
        head += f", {args.method}, {b.details['regime']}, {args.optimizer}"
        head += f", batch {args.batch} x seq {args.seq}"
        head += f", {'zero' + args.zero if args.zero != '0' else 'ddp'} on {args.gpus} GPU(s)"
    else:
        head += f", {args.dtype} weights, batch {args.batch}, context {args.seq}"
    return "\n".join([head] + [f"  {k:<{width}}  {v}" for k, v in rows])


def cli_main(argv: list[str]) -> int:
    """Entry point of ``python -m labkit estimate``."""
    args = build_parser().parse_args(argv)
    b = estimate(args)  # checks the options and fills their defaults first
    decode = decode_prediction(args)
    if args.json:
        out = {
            k: b.details[k] if k in {"regime", "activations_from"} else getattr(b, k)
            for k in JSON_KEYS
        }
        if "prefill_peak" in b.details:
            out["prefill_peak"] = b.details["prefill_peak"]
        out.update(transient=b.transient, rule_of_thumb=int(b.details["rule_of_thumb"]))
        if decode is not None:
            out.update(card=decode["card"], decode_tokens_per_s=decode["decode_tokens_per_s"])
        print(json.dumps(out))
    else:
        print(table(b, args, decode))
    return 0
