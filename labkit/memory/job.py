"""A training job: every option of one training step that moves its memory, with one default
each, checked once; and the :class:`Breakdown` of bytes every estimate returns.

:class:`TrainingJob` is what the estimator (:func:`labkit.memory.estimator.training_memory`), the
activation derivation (:func:`labkit.memory.activations.job_activation_bytes`), the dry run
(:func:`labkit.memory.dryrun.training_activations`), the notebook-01 calculator and the
``estimate`` command all take, so a default (LoRA's base dtype, the rank, the targets) is written
here and nowhere else. Its errors name options as the functions' parameters
(:class:`OptionError`); the command line re-spells them as its flags.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import labkit
from labkit import LabkitError
from labkit.checks import boolean, choice, positive
from labkit.dtypes import OPTIMIZERS, PRECISIONS, Precision
from labkit.models.architecture import TRAINING_METHODS

ATTENTIONS = ("eager", "sdpa")
#: Where the step runs: dropout masks are 1 byte on CUDA, the activation dtype on CPU.
DEVICES = ("cuda", "cpu")
#: dtypes an adapter (or a 16-bit LoRA base) can compute in
ADAPTER_DTYPES = ("fp32", "bf16", "fp16")
LORA_METHODS = ("lora", "qlora")


def sdpa_math_kernel(attention: str, device: str, dropout: bool, attn_dropout: float) -> bool:
    """On CPU, SDPA with attention dropout runs PyTorch's math kernel: the eager ops, in fp32
    (``attn_dropout``: the model's attention dropout probability, on when ``dropout``)."""
    return attention == "sdpa" and device == "cpu" and dropout and attn_dropout > 0


@dataclass
class Breakdown:
    """A memory breakdown in bytes (counts where named), as the ``estimate`` command prints it.
    ``optimizer_unsharded``: the part of ``optimizer`` that every rank keeps in full under ZeRO
    and FSDP (step counters, quantile maps: :func:`labkit.memory.estimator.optimizer_unsharded_bytes`).
    ``master_weights``: the part of ``weights`` that is the fp32 master copy of the trainable
    weights under mixed precision (what the optimizer updates; autocast computes with 16-bit copies
    of it): ZeRO-1 and -2 shard it with the optimizer state (:func:`labkit.memory.sharding.sharded`).
    0 in fp32 and pure 16-bit training, which keep no separate master copy."""

    parameters: int
    trainable_parameters: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    kv_cache: int
    transient: int
    total: int
    optimizer_unsharded: int = 0
    master_weights: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class OptionError(LabkitError):
    """A bad option value or combination of options, in one line.

    ``template`` names each option as ``{name}`` or, with a value, ``{name:value}``. ``str()``
    spells them as the functions' parameters (``method='frozen'``); :meth:`spelled` lets another
    interface spell them its own way (the ``estimate`` command: ``--method frozen``).
    """

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.spelled(_as_parameter))

    def spelled(self, spell: Callable[[str, str], str]) -> str:
        """The message with every option written by ``spell(name, value)`` (value "" if none)."""
        return self.template.format_map(_Spelling(spell))


class _Spelling(dict):
    def __init__(self, spell: Callable[[str, str], str]) -> None:
        super().__init__()
        self.spell = spell

    def __missing__(self, name: str) -> _Option:
        return _Option(name, self.spell)


@dataclass(frozen=True)
class _Option:
    name: str
    spell: Callable[[str, str], str]

    def __format__(self, value: str) -> str:
        return self.spell(self.name, value)


def _as_parameter(name: str, value: str) -> str:
    return f"{name}={value!r}" if value else name


@dataclass(frozen=True)
class TrainingJob:
    """One training step's options (every default in one place; checked when built).

    ``method``: ``full``, ``frozen`` (embeddings and the first ``frozen_layers`` blocks frozen),
    ``lora`` or ``qlora`` (NF4 base with double quant), adapters of rank ``lora_r`` on
    ``lora_targets`` (peft's default targets, a comma list or ``all-linear``) in
    ``adapter_dtype`` (peft 0.21 upcasts them to fp32; fp32 anyway under ``precision="fp32"``).
    ``precision``: a :class:`labkit.dtypes.Precision` (or its name). ``base_dtype``: LoRA's frozen
    base; by default the compute dtype (bf16 under ``bf16-mixed`` and ``bf16``, fp32 under
    ``fp32``), as practitioners load it (``dtype=torch.bfloat16``, or transformers 5's default
    ``dtype="auto"`` for a checkpoint stored in bf16: :func:`labkit.memory.estimator.loaded_dtype`);
    ``"fp32"`` is a base loaded with ``dtype=torch.float32`` (or stored in fp32). ``grad_accum`` changes no memory (the same
    micro-batch runs N times). ``dropout``: train mode with the config's dropout; ``device``:
    ``cuda`` (1-byte dropout masks) or ``cpu``.
    """

    method: str = "full"
    precision: Precision | str = "bf16-mixed"
    optimizer: str = "adamw"
    batch: int = 1
    seq: int = 512
    grad_accum: int = 1
    checkpointing: bool = False
    attention: str = "sdpa"
    lora_r: int = 8
    lora_targets: Any = "default"
    frozen_layers: int = 0
    adapter_dtype: str = "fp32"
    base_dtype: str | None = None
    dropout: bool = True
    device: str = "cuda"

    def __post_init__(self) -> None:
        choice("method", self.method, TRAINING_METHODS)
        if not isinstance(self.precision, Precision):
            choice("precision", self.precision, PRECISIONS)
            object.__setattr__(self, "precision", Precision(self.precision))
        choice("optimizer", self.optimizer, OPTIMIZERS)
        choice("attention", self.attention, ATTENTIONS)
        choice("device", self.device, DEVICES)
        choice("adapter dtype", self.adapter_dtype, ADAPTER_DTYPES)
        for name, what in (
            ("batch", "batch"),
            ("seq", "sequence length"),
            ("grad_accum", "gradient accumulation steps"),
            ("lora_r", "LoRA rank r"),
        ):
            object.__setattr__(self, name, positive(what, getattr(self, name)))
        for name in ("checkpointing", "dropout"):  # "no" would be truthy: refused
            object.__setattr__(self, name, boolean(name, getattr(self, name)))
        self._check_combinations()

    def _check_combinations(self) -> None:
        k = self.frozen_layers
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
            raise OptionError(f"{{frozen_layers}} must be an integer >= 0, got {k!r}")
        if self.method == "qlora" and self.precision.name == "fp32":
            raise OptionError(
                "{method:qlora} needs a 16-bit {precision} (bf16-mixed, fp16-mixed or bf16)"
            )
        if self.method != "frozen" and k:
            raise OptionError("{frozen_layers} needs {method:frozen}")
        if self.base_dtype is not None:
            if self.method != "lora":
                raise OptionError("{base_dtype} applies to {method:lora} (QLoRA's base is NF4)")
            choice("base dtype", self.base_dtype, ADAPTER_DTYPES)
            if self.precision.name == "fp32" and self.base_dtype != "fp32":
                raise OptionError(
                    f"{{base_dtype:{self.base_dtype}}} needs a 16-bit {{precision}} "
                    "(bf16-mixed, fp16-mixed or bf16)"
                )

    def check_layers(self, layers: int) -> None:
        """Refuse more frozen layers than the model has (the one check that needs the model)."""
        if not 0 <= self.frozen_layers <= layers:
            raise OptionError(
                f"{{frozen_layers}} must be between 0 and {layers}, got {self.frozen_layers}"
            )

    @classmethod
    def of(cls, job: TrainingJob | None, options: Mapping[str, Any]) -> TrainingJob:
        """``job`` with ``options`` changed, or a job of ``options`` alone (what a function
        taking ``(config, job=None, **options)`` does with its arguments)."""
        names = [f.name for f in fields(cls)]
        for name in options:
            if name not in names:
                raise labkit.unknown("training option", name, names)
        if job is None:
            return cls(**options)
        return replace(job, **options) if options else job

    @property
    def lora(self) -> bool:
        """A frozen base with adapters (LoRA or QLoRA)."""
        return self.method in LORA_METHODS

    @property
    def adapters(self) -> str:
        """The adapters' dtype in effect: fp32 under ``precision="fp32"``, else ``adapter_dtype``."""
        return "fp32" if self.precision.name == "fp32" else self.adapter_dtype

    @property
    def weight_dtype(self) -> str:
        """The dtype of the model's own weights: the precision's weight dtype for full and
        frozen fine-tuning, LoRA's base (``base_dtype``, by default the compute dtype), NF4 for
        QLoRA."""
        if self.method == "qlora":
            return "nf4"
        if self.method == "lora":
            return self.base_dtype or self.precision.compute
        return self.precision.weights

    @property
    def adapters_autocast(self) -> bool:
        """LoRA on a 16-bit base, or QLoRA (its NF4 base computes in the 16-bit compute dtype),
        under autocast: the adapters' matmuls run in 16 bit."""
        return self.lora and self.precision.mixed and self.weight_dtype in {"bf16", "fp16", "nf4"}

    @property
    def regime(self) -> str:
        """The precision regime in words, e.g. "pure bf16", "bf16 autocast with fp32 master
        weights", "LoRA: bf16 base + fp32 adapters, bf16 autocast", "QLoRA: NF4 base (double
        quantization) + fp32 adapters, bf16 compute, no autocast" (the estimator sizes QLoRA's NF4
        with double quantization, QLoRA's recipe: :func:`labkit.memory.estimator.nf4_bytes`)."""
        p = self.precision
        if not self.lora:
            return f"{p.words} with fp32 master weights" if p.mixed else p.words
        # "pure" would be wrong: the adapters keep their own dtype
        compute = p.words if p.mixed or p.name == "fp32" else f"{p.name} compute, no autocast"
        if self.method == "qlora":  # the NF4 size depends on it: named
            return f"QLoRA: NF4 base (double quantization) + {self.adapters} adapters, {compute}"
        return f"LoRA: {self.weight_dtype} base + {self.adapters} adapters, {compute}"
