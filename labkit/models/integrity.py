"""Whether a loaded model holds its real weights: the checks :func:`labkit.models.zoo.load_model`
runs so that a model loads with its real weights or not at all.

- **Recorded digests.** A folder with a ``provenance.json`` that records sha256 (the zoo Llama,
  or any copy of it, wherever it lives) is checked file by file (:func:`verify_folder`), once per
  file and process (:mod:`labkit.files`).
- **Config and weights agree.** transformers fills a tensor the file lacks with random values
  and drops one the config has no place for (a layer count that disagrees with the weights),
  reporting both only in a log table; :func:`check_loading_info` makes each one line.
- **No integer tensor cast into a float model** (:func:`check_integer_tensors`): int8 values
  cast to float are not dequantized weights.
- **No NaN or inf** in a floating-point parameter (:func:`first_non_finite`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from labkit import LabkitError
from labkit.files import checked_sha256, shown

PROVENANCE = "provenance.json"
#: Elements checked at a time for NaN/inf (bounds the temporary mask on a large embedding).
FINITE_CHUNK = 1 << 24


def folder_hint(folder: str | os.PathLike[str]) -> str:
    """How to restore a model folder that is not a zoo model by name."""
    return (
        "copy that folder again from where it came from, or rebuild it: python -m labkit "
        f"build-zoo --out {shown(folder)} --force"
    )


def recorded_digests(folder: str | os.PathLike[str], hint: str) -> dict[str, str] | None:
    """The sha256 a folder's ``provenance.json`` records (file name -> digest); ``None`` when the
    folder has no ``provenance.json``. A damaged one is one line with ``hint``."""
    prov = Path(folder) / PROVENANCE
    if not prov.is_file():
        return None
    try:
        record = json.loads(prov.read_text(encoding="utf-8"))
        digests = record["sha256"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise LabkitError(
            f"{shown(prov)} is damaged ({type(err).__name__}: {str(err)[:80]}); {hint}"
        ) from None
    except OSError as err:
        raise LabkitError(f"cannot read {shown(prov)} ({err.strerror}); {hint}") from None
    if (
        not isinstance(digests, dict)
        or "model.safetensors" not in digests
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in digests.items())
    ):
        raise LabkitError(f"{shown(prov)} records no sha256 of model.safetensors; {hint}")
    return dict(digests)


def verify_folder(folder: str | os.PathLike[str], hint: str) -> str | None:
    """Check every file a folder's ``provenance.json`` records against its sha256; return the
    weights' digest, or ``None`` for a folder without ``provenance.json``."""
    digests = recorded_digests(folder, hint)
    if digests is None:
        return None
    for file, expected in digests.items():
        if Path(file).name != file:  # a name, never a path out of the folder
            raise LabkitError(f"{shown(Path(folder) / PROVENANCE)} names {file!r}; {hint}")
        checked_sha256(Path(folder) / file, expected, hint)
    return digests["model.safetensors"]


def _listed(keys: Iterable[Any]) -> str:
    keys = sorted(str(k) for k in keys)
    more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
    return f"{keys[0]}{more}"


def _body_parts(model: torch.nn.Module) -> tuple[str, set[str]]:
    """The base model's prefix (``model``, ``transformer``...) and its child modules' names."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    base = getattr(model, "base_model", model)
    return prefix, {name for name, _ in base.named_children()}


def _in_body(key: str, prefix: str, children: set[str]) -> bool:
    """Whether a state-dict key names a tensor of the transformer body (not a task head)."""
    if prefix and key.startswith(prefix + "."):
        key = key[len(prefix) + 1 :]
    return key.split(".", 1)[0] in children


def check_loading_info(
    model: torch.nn.Module, info: dict[str, Any], task: str, where: str, hint: str
) -> None:
    """Refuse a load whose weights and config disagree (``info``: ``output_loading_info``).

    Refused: a tensor the weights lack (transformers would random-initialise it), except a new
    task head (``sequence-classification``'s ``score``); a tensor of the body the config has no
    place for (a layer more in the weights than in ``config.json``); a tensor of another shape.
    A tensor of no module (``evil.weight``) or another task's head (``lm_head`` under
    ``task='base'``) is left out, as transformers does.
    """
    prefix, children = _body_parts(model)
    missing = [
        k
        for k in info.get("missing_keys", ())
        if task == "causal-lm" or _in_body(k, prefix, children)
    ]
    if missing:
        raise LabkitError(
            f"the weights in {where} lack {_listed(missing)}, which the model built from its "
            f"config.json needs (it would be random): config and weights disagree; {hint}"
        )
    extra = [k for k in info.get("unexpected_keys", ()) if _in_body(k, prefix, children)]
    if extra:
        raise LabkitError(
            f"the weights in {where} hold {_listed(extra)}, which the model built from its "
            "config.json has no place for (e.g. a layer count that disagrees with the weights): "
            f"config and weights disagree; {hint}"
        )
    mismatched = list(info.get("mismatched_keys", ()))
    if mismatched:
        key, ckpt, want = (list(mismatched[0]) + [None, None])[:3]
        shapes = f" is {list(ckpt)} in the weights but {list(want)} in the model" if want else ""
        raise LabkitError(
            f"tensor {key}{shapes} built from config.json ({len(mismatched)} tensor(s) differ): "
            f"config and weights disagree; {hint}"
        )


def weight_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The files a folder's weights are in, as ``from_pretrained`` picks them: safetensors first
    (one file, or the shards of its index), else ``pytorch_model.bin`` (or its shards)."""
    folder = Path(folder)
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            try:
                shards = json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"]
                names = sorted(set(shards.values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                return []  # from_pretrained has already refused a broken index
            return [folder / n for n in names if (folder / n).is_file()]
    return []


def _integer_tensors(path: Path) -> Iterator[tuple[str, str]]:
    """(name, dtype) of each integer tensor stored in a weights file, reading headers only
    (safetensors) or a memory map (a zip ``pytorch_model.bin``; an old pickle is not read)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                dtype = fh.get_slice(key).get_dtype()
                if dtype.startswith(("I", "U", "BOOL")):
                    yield key, dtype
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, ValueError):
        return  # not a zip checkpoint: from_pretrained has read it, nothing cheap to check
    for key, tensor in state.items() if isinstance(state, dict) else ():
        if isinstance(tensor, torch.Tensor) and not (
            tensor.dtype.is_floating_point or tensor.dtype.is_complex
        ):
            yield key, str(tensor.dtype).removeprefix("torch.")


def check_integer_tensors(model: torch.nn.Module, folder: str | os.PathLike[str], hint: str):
    """Refuse integer tensors in the files of a float parameter (they were cast, not
    dequantized). Integer buffers (``position_ids``) are fine."""
    floats = {k for k, v in model.state_dict().items() if v.is_floating_point()}
    prefix = getattr(model, "base_model_prefix", "") or ""
    for path in weight_files(folder):
        for key, dtype in _integer_tensors(path):
            if {key, key.removeprefix(prefix + "."), f"{prefix}.{key}"} & floats:
                raise LabkitError(
                    f"tensor {key} in {shown(path)} is stored as {dtype} but the model's "
                    "parameter is floating point: integer values would be cast, not "
                    "dequantized; accepted: float weights, or a quantized checkpoint whose "
                    f"config.json has its quantization_config; {hint}"
                )


def first_non_finite(model: torch.nn.Module) -> str | None:
    """The name of the first floating-point parameter holding NaN or inf, else ``None``
    (parameters on the meta device, offloaded, are skipped)."""
    for name, p in model.named_parameters():
        if not p.is_floating_point() or p.device.type == "meta":
            continue
        flat = p.detach().reshape(-1)
        for chunk in flat.split(FINITE_CHUNK):
            if not bool(torch.isfinite(chunk).all()):
                return name
    return None
