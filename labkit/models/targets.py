"""Which modules a LoRA adapter adapts and what each training method trains, from the module
table of :mod:`labkit.models.architecture`.

- :func:`linear_layers` / :func:`block_linears`: the Linear / Conv1D layers LoRA can adapt (and
  that int8 / NF4 quantization acts on);
- target discovery: :func:`regex_matches`, :func:`default_target_modules` and
  :func:`lora_modules` (peft's own matching, ``check_target_module_exists``);
- :func:`lora_parameters`, :func:`trainable_shapes`: what full fine-tuning, frozen layers, LoRA or
  QLoRA train.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any

from labkit import LabkitError
from labkit.checks import choice, positive
from labkit.models.architecture import (
    TRAINING_METHODS,
    ModuleInfo,
    model_type_of,
    module_table,
    param_shapes,
)

#: The LoRA targets peft picks when ``target_modules`` is None (its per-model-type mapping, held
#: here so the estimator needs no peft import; a test compares them with
#: :func:`default_target_modules`).
PEFT_DEFAULT_TARGETS = {
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",),
    "bloom": ("query_key_value",),
}


def block_linears(config: Any) -> list[ModuleInfo]:
    """The Linear / Conv1D layers of the blocks (not the output head): what int8 / NF4
    quantization and autocast's casts act on."""
    return [m for m in linear_layers(config) if m.name != "lm_head" and not m.tied]


# ----------------------------------------------------------------------------- targets
def linear_layers(config: Any) -> list[ModuleInfo]:
    """The Linear / Conv1D layers LoRA can adapt (the output head ``lm_head`` included, last)."""
    return [m for m in module_table(config) if m.kind in {"linear", "conv1d"}]


def _strip(name: str) -> str:
    return name.removeprefix("base_model.model.")


def regex_matches(pattern: str, config: Any) -> list[str]:
    """Module names ``pattern`` matches the way peft matches a string ``target_modules``.

    peft uses ``re.fullmatch`` on the dotted name, so ``"q_proj"`` as a regex matches nothing
    (write ``".*q_proj"``), unlike the list form ``["q_proj"]`` which matches name endings.
    """
    try:
        rx = re.compile(pattern)
    except re.error as err:
        raise LabkitError(f"invalid regex {pattern!r}: {err}; accepted: a Python regex") from None
    return [_strip(m.name) for m in module_table(config) if rx.fullmatch(_strip(m.name))]


def default_target_modules(model_type: str) -> list[str]:
    """The LoRA targets peft picks when ``target_modules`` is None, for a model type."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAPPING

    if model_type not in MAPPING:
        raise LabkitError(
            f"peft has no default LoRA targets for model type {model_type!r}; "
            f"known: {', '.join(sorted(MAPPING)[:12])}... (pass target_modules explicitly)"
        )
    return list(MAPPING[model_type])


def _shorthand(table: list[ModuleInfo], model_type: str, targets: str | Iterable[str]):
    """A peft ``target_modules`` from the estimator's shorthand: ``"default"``, ``"all-linear"``,
    a comma-separated string or a list of module names (each must name a block linear)."""
    linears = [m for m in table if m.kind in {"linear", "conv1d"} and m.name != "lm_head"]
    names = list(dict.fromkeys(m.name.rsplit(".", 1)[-1] for m in linears))
    if targets == "default":
        targets = PEFT_DEFAULT_TARGETS.get(model_type) or default_target_modules(model_type)
    elif isinstance(targets, str):
        targets = names if targets == "all-linear" else [t for t in targets.split(",") if t]
    targets = list(targets)
    if len(targets) > 1 and {"all-linear", "default"} & set(targets):
        raise LabkitError(
            f"LoRA targets {','.join(targets)!r} mix names with "
            f"{'all-linear' if 'all-linear' in targets else 'default'}, which stands alone; "
            f"accepted: all-linear, default, or names from {', '.join(names)}"
        )
    bad = [t for t in targets if t not in names]
    if bad or not targets:
        raise LabkitError(
            f"unknown LoRA target(s) {bad or targets!r} for {model_type}; "
            f"accepted: {', '.join(names)}, all-linear or default"
        )
    return targets


def lora_modules(config: Any, targets: Any = "default") -> list[ModuleInfo]:
    """The modules a LoRA adapter on ``targets`` adapts in the model ``config`` describes.

    ``targets``: a peft ``LoraConfig`` (its ``target_modules``, ``exclude_modules``,
    ``layers_to_transform``, ``modules_to_save`` as peft matches them, with peft's own
    ``check_target_module_exists``), or the estimator's shorthand: module names
    (``["q_proj", "v_proj"]``), a comma-separated string, ``"all-linear"`` (every linear in the
    blocks, not the output head, as peft does) or ``"default"`` (peft's default for the model
    type: q and v, GPT-2's ``c_attn``, BLOOM's ``query_key_value``).
    """
    table = module_table(config)
    model_type = model_type_of(config)
    if not hasattr(targets, "target_modules"):  # shorthand: peft's list rule, a name's last part
        wanted = _shorthand(table, model_type, targets)
        linears = [m for m in table if m.kind in {"linear", "conv1d"} and m.name != "lm_head"]
        return [m for m in linears if m.name.rsplit(".", 1)[-1] in wanted]
    from peft.tuners.tuners_utils import check_target_module_exists

    lora = targets
    if getattr(lora, "target_parameters", None):
        raise LabkitError("target_parameters is not supported here; accepted: target_modules")
    wanted = lora.target_modules
    if wanted is None:
        wanted = default_target_modules(model_type)
    elif isinstance(wanted, str) and wanted.lower() == "all-linear":
        wanted = {m.name for m in table if m.kind in {"linear", "conv1d"}} - {"lm_head"}

    resolved = copy.copy(lora)  # the config as peft sees it once target_modules is resolved
    resolved.target_modules = wanted
    found = [m for m in table if check_target_module_exists(resolved, m.name)]
    bad = [m.name for m in found if m.kind not in {"linear", "conv1d", "embedding"}]
    if bad:
        raise LabkitError(
            f"target module {bad[0]!r} is not a Linear, Conv1D or Embedding layer; accepted: "
            "names or a regex that match only such layers (see labkit.models.targets.linear_layers)"
        )
    if not found:
        raise LabkitError(
            f"target_modules={wanted!r} matches no module of this {model_type} model; "
            "accepted: names from labkit.models.targets.linear_layers(config) or a full-match regex"
        )
    return found


def lora_parameters(config: Any, r: int, targets: Any = "default") -> int:
    """LoRA trainable parameters: r·(d_in + d_out) per adapted matrix."""
    positive("LoRA rank r", r)
    return sum(r * (m.d_in + m.d_out) for m in lora_modules(config, targets))


def trainable_shapes(
    config: Any,
    method: str = "full",
    *,
    r: int = 8,
    targets: Any = "default",
    frozen_layers: int = 0,
) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors ``method`` trains (see :data:`TRAINING_METHODS`).

    ``full``: every parameter; ``lora`` / ``qlora``: ``lora_A`` (r, d_in) and ``lora_B``
    (d_out, r) per adapted module; ``frozen``: all but the embeddings (and with them a tied head)
    and the first ``frozen_layers`` blocks.
    """
    choice("method", method, TRAINING_METHODS)
    shapes = param_shapes(config)
    if method == "full":
        return shapes
    if method in {"lora", "qlora"}:
        out = {}
        for m in lora_modules(config, targets):
            out[f"{m.name}.weight.lora_A"], out[f"{m.name}.weight.lora_B"] = (
                (r, m.d_in),
                (m.d_out, r),
            )
        return out
    emb = {f"{m.name}.weight" for m in module_table(config) if m.kind == "embedding"}
    emb |= {n for n in shapes if "word_embeddings_layernorm" in n}
    frozen = re.compile(rf"\.(h|layers)\.({'|'.join(str(k) for k in range(frozen_layers))})\.")
    return {
        n: shp
        for n, shp in shapes.items()
        if n not in emb and not (frozen_layers and frozen.search(n))
    }
