"""``python -m labkit estimate MODEL [options] [--json]``: memory (and GPUs) for training or inference.

MODEL is a config.json path, a model folder, a catalog or zoo name, or (online) a hub id. Only the
config is read. Any causal LM transformers can build is estimated: the five formula families
(Llama, Mistral, Qwen2, GPT-2, BLOOM) by the derivation, any other (Mixtral, Gemma, Phi-3, Qwen3,
GPT-NeoX...) by a dry run on fake tensors; ``activations_from`` says which. Inference reports the
prefill's peak (a dry run) besides weights + KV cache + logits. Every total names its precision
regime; ``--method lora`` keeps the frozen base in the compute dtype as practitioners do
(``--base-dtype fp32`` for the fp32-base figure). The job, its defaults and its checks are
:class:`labkit.memory.job.TrainingJob`'s, the verdict :func:`labkit.memory.calculator.fit`'s: the
same path as notebook 02's calculator. Training on one GPU also reports the peak of a step
(:func:`labkit.memory.peak.training_peak`: the largest live set, its phase, each phase's largest;
``--optimizer-impl``, ``--device``, ``--lora-dropout`` move it), which the verdict reads; ``--fit
GIB`` answers the inverse question (:mod:`labkit.fit.search`); ``--fit GIB --levers auto`` plans
the cheapest set of levers whose peak fits (:mod:`labkit.fit.plan`; ``--reserve GIB`` keeps room
for the CUDA context), and reports the planned job's peak. The components (weights ... total) are
the estimator's, whose job has no field for some levers (``checkpoint_every``, the chunked loss,
...): they are then the job's without those levers, which ``components_without`` names. Bad input
is one line on stderr with exit status 2 (see
:mod:`labkit.cli`); the memory API's errors name its parameters, :func:`flag` re-spells them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from labkit import LabkitError
from labkit.cli import Parser
from labkit.dtypes import OPTIMIZERS, PRECISIONS
from labkit.fit import plan, search
from labkit.inference import roofline
from labkit.memory import calculator, estimator, peak, rules, sharding
from labkit.memory.job import ATTENTIONS, DEVICES, OptionError, TrainingJob
from labkit.models import architecture, zoo

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
#: The options ``--mode infer`` uses; it refuses every other option of a training job.
INFER_OPTIONS = ("batch", "seq", "attention")
#: The flag of each parameter of the memory API whose flag is not ``--`` + its name with dashes.
FLAGS = {"context": "--seq", "gpu_gib": "--gpu-memory"}
#: Options of a training job the command passes on when given (the job's defaults otherwise).
JOB_OPTIONS = (
    "method",
    "precision",
    "optimizer",
    "batch",
    "seq",
    "grad_accum",
    "checkpointing",
    "attention",
    "lora_r",
    "lora_targets",
    "frozen_layers",
    "base_dtype",
    "device",
)
#: Keys the ``--json`` object gains in training on one GPU or under DDP: the peak of a step
#: (bytes), its phase and moment, what is alive then, the largest live bytes of each phase, the
#: bytes DDP's gradient buckets add on every GPU (null on one GPU); with ``--fit``,
#: ``max_batch`` and ``max_seq`` (null when not even 1 fits).
PEAK_KEYS = (
    "peak",
    "peak_phase",
    "peak_moment",
    "peak_step",
    "peak_alive",
    "phases",
    "ddp_buckets",
)


def flag(name: str, value: str = "") -> str:
    """The command's spelling of the API parameter ``name`` (and its ``value``): the one place
    where the memory API's errors, which name parameters, are turned into flags."""
    spelled = FLAGS.get(name, "--" + name.replace("_", "-"))
    return f"{spelled} {value}" if value else spelled


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
_nonneg_float = _number(float, lambda v: v >= 0, "a number >= 0")
_dropout = _number(float, lambda v: 0 <= v < 1, "a probability in [0, 1)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m labkit estimate", description=__doc__.splitlines()[0])
    p.add_argument("model", help="config.json path, model folder, zoo/catalog name or hub id")
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    # None: not given, the job's own default (TrainingJob) applies
    job = TrainingJob
    p.add_argument("--method", choices=architecture.TRAINING_METHODS, help=f"({job.method})")
    p.add_argument("--precision", choices=PRECISIONS, help=f"({job.precision})")
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS), help=f"({job.optimizer})")
    p.add_argument("--batch", type=_positive_int, default=1, help="micro-batch per GPU")
    p.add_argument("--seq", type=_positive_int, default=512, help="sequence / context length")
    p.add_argument("--grad-accum", type=_positive_int, help=f"({job.grad_accum})")
    p.add_argument(
        "--checkpointing", action="store_true", default=None, help="gradient checkpointing on"
    )
    p.add_argument("--attention", choices=ATTENTIONS, default="sdpa")
    p.add_argument(
        "--base-dtype",
        choices=("bf16", "fp16", "fp32"),
        default=None,
        help="LoRA's frozen base (default: the compute dtype, as in practice)",
    )
    p.add_argument("--lora-r", type=_positive_int, help=f"with --method lora ({job.lora_r})")
    p.add_argument(
        "--lora-targets",
        default=None,
        help="with --method lora: comma list, all-linear, or default (peft's default)",
    )
    p.add_argument("--frozen-layers", type=_nonneg_int, default=None, help="with --method frozen")
    p.add_argument(
        "--dtype", choices=estimator.WEIGHT_DTYPES, default=None, help="--mode infer weights (bf16)"
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default=None,
        help=f"where the step runs: dropout masks, the optimizer torch picks ({job.device})",
    )
    p.add_argument(
        "--optimizer-impl",
        choices=peak.IMPLS,
        default=None,
        help="the optimizer's implementation (default: what torch picks on --device: "
        "foreach on cuda, single on cpu)",
    )
    p.add_argument("--lora-dropout", type=_dropout, default=None, help="peft's lora_dropout (0.0)")
    p.add_argument(
        "--fit",
        type=_positive_float,
        default=None,
        metavar="GIB",
        help="the largest --batch at --seq and the longest --seq at --batch whose peak fits GIB",
    )
    p.add_argument(
        "--reserve",
        type=_nonneg_float,
        default=None,
        metavar="GIB",
        help="with --fit: keep GIB of the card free (CUDA context, cuBLAS workspace; 0)",
    )
    p.add_argument(
        "--levers",
        default=None,
        metavar="auto|NAMES",
        help="with --fit: the cheapest set of levers whose peak fits GIB (auto: any of "
        + ", ".join(plan.LEVERS)
        + "; or a comma list of those allowed); the figures are then the planned job's",
    )
    p.add_argument(
        "--with",
        dest="with_levers",
        default=None,
        metavar="NAMES",
        help="apply these levers to the job (a comma list of "
        + ", ".join(plan.LEVERS)
        + "): the figures and the peak are then the job's with them",
    )
    p.add_argument("--gpus", type=_positive_int, default=1, help="data-parallel GPUs")
    p.add_argument(
        "--zero",
        choices=[str(z) for z in sharding.ZERO_STAGES],
        default="0",
        help="ZeRO stage (0 = DDP)",
    )
    p.add_argument("--gpu-memory", type=_positive_float, default=80.0, help="GiB per GPU")
    p.add_argument(
        "--card",
        help="with --mode infer: predicted decode speed on this GPU (names: labkit.inference.roofline.CARDS)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _load(model: str):
    """The config of MODEL: a ``.json`` file is read as a dict by :func:`labkit.models.zoo.read_config_file`
    (zoo's one-line messages for a damaged file), checked by labkit's own one-line checks of a
    formula family's sizes, then by transformers' own config validation as any other route
    (:func:`labkit.models.zoo.load_config`: what it refuses, ``estimate`` refuses); anything else
    is loaded by :func:`labkit.models.zoo.load_config`."""
    path = Path(model)
    if path.suffix == ".json" or path.name == "config.json":
        if not path.is_file():
            raise LabkitError(
                f"config file {model!r} does not exist; give a config.json path, folder or name"
            )
        config = zoo.read_config_file(path)
        if estimator.is_formula_family(config):
            architecture.shape_of(config)  # labkit's messages first (heads that do not divide...)
        zoo.load_config(path)  # transformers' validation ("tie_word_embeddings": "false"...)
        return config
    return zoo.load_config(model)


def _check_options(args: argparse.Namespace) -> None:
    """Refuse options that the chosen mode ignores (they would change nothing, silently)."""
    infer = args.mode == "infer"
    ignored = [n for n in JOB_OPTIONS if n not in INFER_OPTIONS and getattr(args, n) is not None]
    if infer and ignored:
        kept = [flag(n) for n in (*INFER_OPTIONS, "dtype", "card", "gpus", "zero", "gpu_memory")]
        raise LabkitError(
            f"{' '.join(flag(n) for n in ignored)}: options of a training job, which "
            f"{flag('mode', 'infer')} ignores; accepted with it: {', '.join(kept)}"
        )
    lora = not infer and args.method in {"lora", "qlora"}
    given = [flag(n) for n in ("lora_targets", "lora_r") if getattr(args, n) is not None]
    if given and not lora:
        raise LabkitError(
            f"{' and '.join(given)} apply to {flag('method', 'lora')} or qlora "
            f"(with {flag('mode', 'train')})"
        )
    train_only = [
        flag(n)
        for n, v in (("optimizer_impl", args.optimizer_impl), ("lora_dropout", args.lora_dropout))
        + (("fit", args.fit),)
        if v is not None  # --lora-dropout 0 given in infer mode is ignored too
    ]
    if train_only and infer:
        raise LabkitError(f"{' and '.join(train_only)} apply to {flag('mode', 'train')}")
    if args.with_levers is not None and (args.levers is not None or infer or args.gpus != 1):
        raise LabkitError(
            f"{flag('with')} applies levers to one card's training step: not with "
            f"{flag('levers')}, {flag('mode', 'infer')} or {flag('gpus')} > 1"
        )
    if args.reserve is not None and args.fit is None:
        raise LabkitError(f"{flag('reserve', 'GIB')} applies to {flag('fit', 'GIB')}")
    if args.fit is not None and args.zero != "0":
        raise LabkitError(
            f"{flag('fit', 'GIB')} reads the peak of a step, modelled on one card or under DDP: "
            f"not with {flag('zero')} {args.zero} (accepted: {flag('zero', '0')})"
        )
    if args.levers is not None and (args.fit is None or args.gpus != 1 or args.zero != "0"):
        raise LabkitError(
            f"{flag('levers')} plans for one card: it needs {flag('fit', 'GIB')} "
            f"(with {flag('gpus', '1')} and {flag('zero', '0')})"
        )
    if args.dtype is not None and not infer:
        raise LabkitError(
            f"{flag('dtype')} sets the weights of {flag('mode', 'infer')}; for training use "
            f"{flag('precision')} or {flag('method')}"
        )


def _job(args: argparse.Namespace, components: bool = False) -> TrainingJob:
    """The training job of the given options (the job's own defaults for the others), with the
    planned levers' options that are the job's; with ``components``, only the levers whose
    options are all the job's (:func:`components_without`: the estimator's components cannot
    hold the others, so they leave such a lever out whole rather than half of it)."""
    options = {name: getattr(args, name) for name in JOB_OPTIONS}
    planned = _planned(args)
    if components:
        kept = [n for n in _chosen_levers(args) if n not in components_without(args)]
        planned = plan.options_of(kept) if kept else {}
    options.update({k: v for k, v in planned.items() if k in JOB_OPTIONS})
    return TrainingJob(**{k: v for k, v in options.items() if v is not None})


def _chosen_levers(args: argparse.Namespace) -> tuple[str, ...]:
    """The planned levers (``--levers``) or the chosen ones (``--with``); () without them."""
    found = getattr(args, "plan", None)
    if found is not None:
        return tuple(found.levers)
    return plan.lever_names(args.with_levers) if args.with_levers is not None else ()


def components_without(args: argparse.Namespace) -> list[str]:
    """The levers the components (weights ... total) leave out: those that set an option of the
    peak that the estimator's job has no field for (``checkpoint_every``, ``loss``,
    ``galore_rank``, ...). The peak, its phases and what is alive at it have every lever."""
    job = {*JOB_OPTIONS, "impl"}  # the update loop moves the peak only, no component
    return [n for n in _chosen_levers(args) if not set(plan.LEVERS[n]) <= job]


def estimate(args: argparse.Namespace) -> calculator.Fit:
    """The job of the parsed arguments on ``--gpus`` GPUs (per GPU, after sharding), and the
    fewest GPUs it needs; the API's errors name parameters, re-spelled here as flags."""
    _check_options(args)
    config = _load(args.model)
    try:
        if args.mode == "infer":
            dtype = {"dtype": args.dtype} if args.dtype else {}
            b = estimator.inference_memory(
                config,
                batch=args.batch,
                context=args.seq,
                prefill=True,
                attention=args.attention,
                **dtype,
            )
        else:
            job = _job(args)
            b = estimator.training_memory(config, _job(args, components=True))
            ddp = int(args.zero) == 0  # one GPU, or DDP (whose buckets calculator.fit adds)
            step = peak.training_peak(config, job, **_levers(args)) if ddp else None
            return calculator.fit(
                b, gpus=args.gpus, zero=int(args.zero), gpu_gib=args.gpu_memory, peak=step
            )
        return calculator.fit(b, gpus=args.gpus, zero=int(args.zero), gpu_gib=args.gpu_memory)
    except OptionError as err:
        raise LabkitError(err.spelled(flag)) from None


def _levers(args: argparse.Namespace) -> dict[str, Any]:
    """The peak's options beyond the job: the optimizer's implementation, LoRA's dropout, and
    the planned levers' options that are not the job's (``loss``, ``galore_rank``, ...)."""
    dropout = 0.0 if args.lora_dropout is None else args.lora_dropout
    extra = {k: v for k, v in _planned(args).items() if k not in JOB_OPTIONS}
    return {"impl": args.optimizer_impl, "lora_dropout": dropout, **extra}


def _planned(args: argparse.Namespace) -> dict[str, Any]:
    """The options the planned levers (``--levers``) or the chosen ones (``--with``) set."""
    found = getattr(args, "plan", None)
    if found is not None:
        return found.options
    return plan.options_of(args.with_levers) if args.with_levers is not None else {}


def make_plan(args: argparse.Namespace, config: Any) -> plan.Plan:
    """``--fit GIB --levers auto``: the cheapest levers whose peak fits (:mod:`labkit.fit.plan`)."""
    job = _job(args)
    options = {**vars(job), "precision": job.precision.name, **_levers(args)}
    try:
        return plan.plan(config, args.fit, levers=args.levers, reserve=_reserve(args), **options)
    except OptionError as err:
        raise LabkitError(err.spelled(flag)) from None


def _reserve(args: argparse.Namespace) -> int:
    """``--reserve GIB`` in bytes (0 without it)."""
    return round((args.reserve or 0) * 2**30)


def fit_search(args: argparse.Namespace, config: Any, buckets: int = 0) -> dict[str, int | None]:
    """``--fit GIB``: the largest micro-batch at ``--seq`` and the longest sequence at
    ``--batch`` whose peak fits (:mod:`labkit.fit.search`); ``buckets``: DDP's gradient buckets
    (the verdict's ``ddp_buckets``), held on every GPU whatever the shape."""
    job = _job(args)
    options = {k: v for k, v in vars(job).items() if k not in {"batch", "seq"}}
    options["precision"] = job.precision.name
    return search.fit(
        config,
        args.fit,
        batch=args.batch,
        seq=args.seq,
        reserve=buckets + _reserve(args),
        **options,
        **_levers(args),
    )


def plan_line(p: plan.Plan, gib: float, reserve: float = 0.0) -> str:
    """The plan in one line: its levers, their time cost, the peak with and without them."""
    chosen = plan.levers_text(p.levers) or "no lever needed"
    needs = "".join(f"; needs {c}" for c in p.conditions)
    kept = f" less a reserve of {reserve:g} GiB" if reserve else " (no reserve: --reserve GIB)"
    return (
        f"  plan for {gib:g} GiB{kept}: {chosen} (time per step {plan.cost_text(p.levers)}): "
        f"peak {p.peak / 2**30:.2f} GiB (without: {p.baseline / 2**30:.2f} GiB){needs}; the peak "
        "above is the planned job's"
    )


def components_line(args: argparse.Namespace) -> str | None:
    """One line when the components leave levers out (:func:`components_without`), else None."""
    left = components_without(args)
    if not left:
        return None
    return (
        f"  weights ... total are the job's without {' + '.join(left)} (the estimator has no "
        "field for it); the PEAK and its phases are with every lever"
    )


def rules_of_thumb(b: estimator.Breakdown, mode: str) -> dict[str, float]:
    """The rules of thumb the table shows beside the total: 2x the fp16 weights (inference);
    8x the fp16 weights and mixed-precision AdamW's 16 B/param (training)."""
    if mode == "infer":
        return {"2x the fp16 weights": rules.rule_inference_2x(b.parameters)}
    return {
        "8x the fp16 weights": rules.rule_training_8x(b.parameters),
        "mixed-precision AdamW, 2+2+12 = 16 B/param, no activations": (
            rules.rule_training_mixed_adamw(b.parameters)
        ),
    }


def decode_prediction(args: argparse.Namespace, dtype: str) -> dict[str, Any] | None:
    """The roofline decode prediction for ``--card`` (None without it); inference only."""
    if args.card is None:
        return None
    if args.mode != "infer":
        raise LabkitError(
            f"{flag('card')} applies to {flag('mode', 'infer')} (it predicts decode speed)"
        )
    return roofline.predict(
        _load(args.model), args.card, dtype=dtype, batch=args.batch, context=args.seq
    )


def _gib(n: float) -> str:
    return f"{n / 2**30:10.3f} GiB"


def table(
    fit: calculator.Fit, args: argparse.Namespace, decode: dict[str, Any] | None = None
) -> str:
    b = fit.per_gpu
    rows = []
    if fit.peak is not None:
        p = fit.peak
        rows.append((f"PEAK of a step ({p.phase}, {p.step} step)", _gib(p.peak)))
        rows.append(("  at", p.label))
        if p.details.get("ddp_buckets"):
            rows.append(("  DDP gradient buckets (in the peak)", _gib(p.details["ddp_buckets"])))
        for phase, value in p.phases.items():
            rows.append((f"  largest in {phase}", _gib(value)))
        rows.append(("  impl", f"{p.details['impl']} {b.details['optimizer']}"))
    elif args.mode == "train":
        rows.append(("PEAK of a step", "not modelled under ZeRO (one GPU or DDP only)"))
    rows += [
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
    for name, rule in rules_of_thumb(b, args.mode).items():
        rows.append((f"rule of thumb ({name})", _gib(rule)))
    rows.append(("verdict", fit.verdict))
    if args.mode == "train":  # ZeRO-3 sharding is a training notion: no such row for serving
        need = fit.gpus_needed or f"more than 4096 x {args.gpu_memory:g} GiB"
        rows.append((f"GPUs needed ({args.gpu_memory:g} GiB, ZeRO-3, nodes of 8)", str(need)))
    if decode is not None:
        line = roofline.prediction_line(decode, batch=args.batch, context=args.seq)
        rows.append(("predicted decode (roofline)", line))
    width = max(len(r[0]) for r in rows)
    head = f"{args.model}: {args.mode}"
    if args.mode == "train":
        d = b.details
        head += f", {d['method']}, {d['regime']}, {d['optimizer']}"
        head += f", batch {args.batch} x seq {args.seq}, {fit.strategy} on {args.gpus} GPU(s)"
    else:
        head += f", {b.details['dtype']} weights, batch {args.batch}, context {args.seq}"
    return "\n".join([head] + [f"  {k:<{width}}  {v}" for k, v in rows])


def cli_main(argv: list[str]) -> int:
    """Entry point of ``python -m labkit estimate``."""
    args = build_parser().parse_args(argv)
    if args.levers is not None:
        _check_options(args)
        args.plan = make_plan(args, _load(args.model))
    fit = estimate(args)  # checks the options first
    b = fit.per_gpu
    decode = decode_prediction(args, b.details.get("dtype", "bf16"))
    buckets = (fit.peak.details.get("ddp_buckets") or 0) if fit.peak is not None else 0
    found = fit_search(args, _load(args.model), buckets) if args.fit else None
    if not args.json:
        print(table(fit, args, decode))
        if getattr(args, "plan", None) is not None:
            print(plan_line(args.plan, args.fit, args.reserve or 0.0))
        if args.with_levers is not None:
            print(f"  levers applied (--with): {' + '.join(plan.lever_names(args.with_levers))}")
        if (line := components_line(args)) is not None:
            print(line)
        if found is not None:
            print(
                f"  fits {args.fit:g} GiB: largest --batch at --seq {args.seq}: "
                f"{found['max_batch']}; longest --seq at --batch {args.batch}: {found['max_seq']}"
            )
        return 0
    out = {k: getattr(b, k) for k in JSON_KEYS if hasattr(b, k)}
    out.update(
        gpus_needed=fit.gpus_needed,
        regime=b.details["regime"],
        activations_from=b.details["activations_from"],
    )
    out = {k: out[k] for k in JSON_KEYS}
    if "prefill_peak" in b.details:
        out["prefill_peak"] = b.details["prefill_peak"]
    rule = next(iter(rules_of_thumb(b, args.mode).values()))
    out.update(transient=b.transient, rule_of_thumb=int(rule))
    if args.mode == "train":
        step = fit.peak.as_dict() if fit.peak is not None else {}
        out.update(
            peak=step.get("peak"),
            peak_phase=step.get("peak_phase"),
            peak_moment=step.get("peak_moment"),
            peak_step=step.get("peak_step"),
            peak_alive=step.get("peak_alive"),
            phases=step.get("phases"),
            ddp_buckets=step.get("ddp_buckets"),
            fits=fit.fits,
        )
    if found is not None:
        out.update(found)
    if getattr(args, "plan", None) is not None:
        p = args.plan
        out.update(plan=list(p.levers), peak=p.peak, plan_cost=p.cost, baseline_peak=p.baseline)
        out.update(plan_conditions=list(p.conditions))
    if args.with_levers is not None:
        out.update(levers=list(plan.lever_names(args.with_levers)))
    if _chosen_levers(args):  # the levers the components (weights ... total) leave out
        out.update(components_without=components_without(args))
    if decode is not None:
        out.update(card=decode["card"], decode_tokens_per_s=decode["decode_tokens_per_s"])
    print(json.dumps(out))
    return 0
