"""Bad input over the public API and the commands: one clear line, never a traceback.

Each row calls labkit the way a learner could get wrong and names what the message must contain
(the problem, and where there is one, what is accepted). API rows must raise
:class:`labkit.LabkitError` with a one-line message; command rows (``cli``) must exit with
status 2 and print exactly one line on stderr. Row ids follow the second reliability sweep
(E = estimate, C = commands, TU/T = tune, Z/K = zoo, M = memory, Q = quant, P = precision,
F = peft, X = measure, R = training, V = evaluation); ids ending in ``+`` are new cases of the
same kinds.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit import LabkitError
from labkit import cli as labkit_cli
from labkit.models import zoo


@dataclass
class Ctx:
    tmp: Path
    mp: pytest.MonkeyPatch
    tiny: tuple  # (model, tokenizer): the random-init tiny-llama (conftest.tiny_llama)


def cli(*argv: str) -> None:
    """Run ``python -m labkit ARGV`` in this process; raise its one stderr line as a LabkitError."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = labkit_cli.main(list(argv))
    lines = err.getvalue().strip().splitlines()
    assert status == 2, f"exit status {status}, stderr {lines[-3:]}"
    assert len(lines) == 1, lines
    raise LabkitError(lines[0])


def estimate_json(*argv: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert labkit_cli.main(["estimate", *argv, "--json"]) == 0
    return json.loads(out.getvalue())


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def zoo_copy(ctx: Ctx) -> Path:
    """A private copy of zoo-llama (MODELS_DIR points at it) that a row may damage."""
    models = ctx.tmp / "models"
    shutil.copytree(zoo.MODELS_DIR / "zoo-llama", models / "zoo-llama")
    ctx.mp.setattr(zoo, "MODELS_DIR", models)
    return models / "zoo-llama"


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[4000:4064] = bytes(255 - b for b in data[4000:4064])
    path.write_bytes(bytes(data))


def damaged(
    ctx: Ctx,
    change,
    pickle: bool = False,
    flip_weights: bool = False,
    drop_files: tuple[str, ...] = (),
) -> Path:
    """A copy of zoo-llama at a path of its own, ``change(state_dict, config)`` applied in place.

    The copy keeps its ``provenance.json`` only for ``flip_weights`` or an unchanged state dict
    and config (so a row tests the load checks, not the recorded digests)."""
    from safetensors.torch import load_file, save_file

    folder = ctx.tmp / f"copy{len(list(ctx.tmp.glob('copy*')))}"
    shutil.copytree(zoo.MODELS_DIR / "zoo-llama", folder)
    sd = load_file(folder / "model.safetensors")
    cfg = json.loads((folder / "config.json").read_text())
    old_sd, old_cfg = dict(sd), dict(cfg)
    change(sd, cfg)
    changed = sd.keys() != old_sd.keys() or any(sd[k] is not old_sd[k] for k in sd)
    if flip_weights:
        flip(folder / "model.safetensors")
    elif changed or cfg != old_cfg or pickle or drop_files:
        (folder / "provenance.json").unlink()
        (folder / "config.json").write_text(json.dumps(cfg))
        (folder / "model.safetensors").unlink()
        if pickle:
            torch.save(sd, folder / "pytorch_model.bin")
        else:
            save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    for name in drop_files:
        (folder / name).unlink()
    return folder


def drop(sd: dict, part: str) -> None:
    for key in [k for k in sd if part in k]:
        del sd[key]


def nan_in(sd: dict, part: str) -> None:
    for key in [k for k in sd if part in k]:
        sd[key] = sd[key] * float("nan")


def int8(t: torch.Tensor) -> torch.Tensor:
    return (t * 10).round().clamp(-127, 127).to(torch.int8)


def gen():
    return importlib.import_module("labkit.data.generator")


def loaders():
    return importlib.import_module("labkit.data.loaders")


def runner():
    return importlib.import_module("labkit.course.runner")


def bundle():
    return importlib.import_module("labkit.course.bundle")


def catch_up():
    return importlib.import_module("labkit.course.catch_up")


def data_copy(ctx: Ctx, readme: bool = False) -> Path:
    """A copy of the data sets (loaders.DATA_DIR points at it) that a row may damage; with
    ``readme`` the copy carries data/README.md (its manifest), else the course's is used."""
    data = ctx.tmp / "data"
    for name in ("chat", "corpus", "sentiment"):
        shutil.copytree(loaders().DATA_DIR / name, data / name)
    if readme:
        shutil.copy(loaders().DATA_DIR / "README.md", data / "README.md")
    ctx.mp.setattr(loaders(), "DATA_DIR", data)
    return data


def cut(path: Path, fraction: float = 0.5, lines: float | None = None) -> None:
    """Cut ``path`` as a full disk or a kill leaves it: at a line boundary, or mid-line."""
    if lines is not None:
        kept = path.read_text().splitlines(True)
        path.write_text("".join(kept[: int(len(kept) * lines)]))
    else:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])


def toy_nb(ctx: Ctx) -> Path:
    path = ctx.tmp / "04_ok.ipynb"
    if not path.exists():
        import nbformat

        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), path)
    return path


def report(ctx: Ctx, notebook: str, seconds) -> Path:
    rows = [{"notebook": f"{notebook}.ipynb", "status": "ok", "seconds": seconds}]
    text = json.dumps({"notebooks": rows}).replace('"NaN"', "NaN")
    return write(ctx.tmp / "report.json", text)


def git_repo(ctx: Ctx, files: dict, delete=(), damage: str | None = None) -> Path:
    """A git repository in ``ctx.tmp`` with ``files`` committed and data/README.md's manifest
    recording their sha256; then ``delete`` removed and ``damage`` changed on disk."""
    import hashlib
    import subprocess

    repo = ctx.tmp / "repo"
    for name, text in files.items():
        write(repo / name, text)
    rows = [
        f"| `{n.removeprefix('data/')}` | 1 | `{hashlib.sha256(t.encode()).hexdigest()}` |"
        for n, t in files.items()
        if n.startswith("data/")
    ]
    write(repo / "data" / "README.md", "\n".join(["| file | bytes | sha256 |", *rows]) + "\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run(git + argv, check=True, capture_output=True, timeout=60)
    for name in delete:
        (repo / name).unlink()
    if damage:
        write(repo / damage, "damaged")
    return repo


def fake_bundle(ctx: Ctx, precious: bool = False) -> Path:
    out = ctx.tmp / "bundle"
    (out / "wheelhouse").mkdir(parents=True)
    write(out / "course.tar.gz", b"")
    if precious:
        write(out / "check" / "precious.txt", "notes")
    return out


def config_only(ctx: Ctx, name: str = "tiny-llama") -> Path:
    folder = ctx.tmp / "config-only"
    zoo.load_config(name).save_pretrained(folder)
    return folder


def catalog(name: str) -> dict:
    """The catalog config ``name`` (data/configs) as a dict."""
    return json.loads((zoo.CONFIGS_DIR / name / "config.json").read_text())


def cfg(ctx: Ctx, base: str | dict, name: str = "c.json", **changes) -> str:
    """A config file in ``ctx.tmp``: the catalog config ``base`` (or a dict) with ``changes``."""
    data = catalog(base) if isinstance(base, str) else base
    return str(write(ctx.tmp / name, json.dumps({**data, **changes})))


#: A small Mixtral (a family without a formula: the meta device and the dry run)
MIXTRAL = {
    "model_type": "mixtral",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "vocab_size": 1000,
}
BNB4 = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}


def x8() -> torch.Tensor:
    return torch.randn(4, 8, generator=torch.Generator().manual_seed(0))


def lp():
    from labkit.tuners import peft_methods

    return peft_methods


def ad():
    from labkit.tuners import adapters

    return adapters


def ft():
    from labkit.training import finetune

    return finetune


def fg():
    from labkit.training import forgetting

    return forgetting


def st():
    from labkit.studies import study

    return study


def ll():
    from labkit.training import lm_loss

    return lm_loss


#: One chat row to train on.
CHAT = [{"prompt": "Human: hi\nAssistant:", "response": " yo"}]


def q():
    from labkit.quant import integer

    return integer


def q4():
    from labkit.quant import codebook

    return codebook


def mem():
    from labkit.memory import estimator

    return estimator


def rules():
    from labkit.memory import rules

    return rules


def tune_argv(tmp: Path, *options: str, db: str = "a.db", study: str = "s", trials: str = "1"):
    """``python -m labkit tune`` arguments with a study in ``tmp``, then ``options``."""
    return [
        "tune",
        "--storage",
        f"sqlite:///{tmp / db}",
        "--study-name",
        study,
        "--n-trials",
        trials,
        *options,
    ]


SECRET_URL = "postgresql://learner:S3cretPassw0rd@127.0.0.1:1/optuna"


def memory_argv(url: str) -> list[str]:
    return ["--storage", url, "--study-name", "s", "--n-trials", "1", "--budget", "smoke"]


def sqlite_file(ctx: Ctx, name: str, table: str) -> str:
    """An SQLite file in ``ctx.tmp`` holding one table of another program."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(ctx.tmp / name)) as db:
        db.execute(f"create table {table} (id integer)")
        db.commit()
    return name


def foreign_study(ctx: Ctx, param: str = "dropout") -> str:
    """A study made by another script (budget and seed set by hand like labkit tune's) whose 2
    COMPLETE trials searched ``param`` over 0.1..0.5."""
    import optuna

    study = optuna.create_study(
        storage=f"sqlite:///{ctx.tmp / 'f.db'}", study_name="s", direction="maximize"
    )
    study.set_user_attr("budget", "smoke")
    study.set_user_attr("seed", 0)
    study.optimize(lambda t: t.suggest_float(param, 0.1, 0.5), n_trials=2)
    return "f.db"


def damaged_study(ctx: Ctx) -> str:
    """A 2-trial study file whose pages 3-5 are scrambled."""
    import optuna

    optuna.create_study(storage=f"sqlite:///{ctx.tmp / 'd.db'}", study_name="s").optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2
    )
    path = ctx.tmp / "d.db"
    data = bytearray(path.read_bytes())
    data[2 * 4096 : 5 * 4096] = bytes((b * 7 + 13) % 256 for b in data[2 * 4096 : 5 * 4096])
    path.write_bytes(bytes(data))
    return "d.db"


def levers_module():
    from labkit.memory import levers

    return levers


def row(id_: str, call, *expect: str):
    return pytest.param(call, expect, id=id_)


ROWS = [
    # --- zoo: a model loads with its real weights or not at all ---------------------------------
    row(
        "K1b",
        lambda c: (flip(zoo_copy(c) / "model.safetensors"), zoo.load_model("zoo-llama")),
        "model.safetensors has sha256",
        "git checkout data/models/zoo-llama",
    ),
    row(
        "K1c",
        lambda c: (
            write(zoo_copy(c) / "model.safetensors", b"\0" * 100),
            zoo.load_model("zoo-llama"),
        ),
        "sha256",
        "restore it",
    ),
    row(
        "K2b",
        lambda c: ((zoo_copy(c) / "model.safetensors").unlink(), zoo.load_model("zoo-llama")),
        "model.safetensors is missing",
    ),
    row(
        "K3",
        lambda c: (
            write(zoo_copy(c) / "provenance.json", '{"sha256": '),
            zoo.load_model("zoo-llama"),
        ),
        "provenance.json is damaged",
        "git checkout",
    ),
    row(
        "K3+",
        lambda c: (write(zoo_copy(c) / "provenance.json", "{}"), zoo.verify("zoo-llama")),
        "provenance.json is damaged",
    ),
    row(
        "K7",
        lambda c: (
            write(zoo_copy(c) / "tokenizer.json", "not json"),
            zoo.load_tokenizer("zoo-llama"),
        ),
        "tokenizer.json has sha256",
    ),
    row(
        "K10",
        lambda c: (shutil.rmtree(zoo_copy(c)), zoo.load_model("zoo-llama")),
        "zoo-llama/config.json is missing",
        "build-zoo",
    ),
    row(
        "K1a",
        lambda c: (flip(zoo_copy(c) / "model.safetensors"), cli("zoo")),
        "labkit zoo:",
        "sha256",
        "restore it",
    ),
    row(
        "K9+",
        lambda c: zoo.load_model(config_only(c)),
        "has a config but no weights",
        "random_init=True",
    ),
    row(
        "Z9",
        lambda c: zoo.load_model(
            write(c.tmp / "t5" / "config.json", json.dumps({"model_type": "t5"})).parent
        ),
        "has a config but no weights",
    ),
    row("Z+catalog", lambda c: zoo.load_model("gpt2"), "catalog config", "random_init=True"),
    row(
        "Z+random",
        lambda c: zoo.load_model("tiny-llama", random_init="yes"),
        "random_init must be True, False or None",
    ),
    row(
        "Z2",
        lambda c: zoo.load_model("tiny-llama", dtype=torch.int8),
        "not a floating-point type",
        "quantization_config",
    ),
    row(
        "Z7",
        lambda c: zoo.load_model("zoo-llama", dtype="float17"),
        "unknown dtype 'float17'",
        "bfloat16",
    ),
    row("Z8", lambda c: zoo.load_model(None), "model must be a name or a path", "zoo-llama"),
    row("Z8+", lambda c: zoo.load_tokenizer(3.5), "model must be a name or a path"),
    row(
        "Z1",
        lambda c: zoo.load_model("zoo-llama", task="seq2seq"),
        "unknown task 'seq2seq'",
        "causal-lm",
    ),
    row("Z5", lambda c: zoo.verify("tiny-llama"), "no checksum is recorded for 'tiny-llama'"),
    row(
        "E32",
        lambda c: zoo.load_config((c.tmp / "empty").mkdir() or c.tmp / "empty"),
        "has no config.json",
        "save_pretrained",
    ),
    row(
        "E26",
        lambda c: zoo.load_config(write(c.tmp / "list.json", "[1, 2]")),
        "holds a JSON list",
        "config.json",
    ),
    row(
        "E33",
        lambda c: zoo.load_config(write(c.tmp / "bin.json", b"\xff\xfe\x00")),
        "not a text file",
    ),
    row("E23", lambda c: zoo.load_config(write(c.tmp / "bad.json", "{bad")), "not valid JSON"),
    row(
        "E28+",
        lambda c: zoo.load_config(write(c.tmp / "x.txt", '{"hidden_size": 4}')),
        'no "model_type"',
    ),
    row(
        "K5",
        lambda c: (
            c.mp.setattr(zoo, "CONFIGS_DIR", c.tmp / "configs"),
            write(c.tmp / "configs" / "llama-3.1-8b" / "config.json", "{oops"),
            zoo.load_config("llama-3.1-8b"),
        ),
        "configs/llama-3.1-8b/config.json is not valid JSON",
    ),
    row("E36", lambda c: zoo.resolve("   "), "empty model name"),
    row("E37", lambda c: zoo.load_model("a/b/c"), "unknown model 'a/b/c'", "zoo names"),
    row(
        "E3+",
        lambda c: (c.mp.setenv("HF_HUB_OFFLINE", "true"), zoo.resolve("Qwen/Qwen2.5-0.5B")),
        "hub id but HF_HUB_OFFLINE=true",
    ),
    # --- zoo, second sweep: real weights or one line; the remedy matches the cause ----------------
    row(
        "K2-05",
        lambda c: zoo.load_model(
            damaged(c, lambda sd, cfg: sd.update({k: int8(v) for k, v in sd.items()}))
        ),
        "stored as I8",
        "quantization_config",
    ),
    row(
        "K2-05+bin",
        lambda c: zoo.load_model(
            damaged(c, lambda sd, cfg: sd.update({k: int8(v) for k, v in sd.items()}), pickle=True)
        ),
        "stored as int8",
    ),
    row(
        "K2-07",
        lambda c: zoo.load_model(damaged(c, lambda sd, cfg: drop(sd, "layers.1.mlp.down_proj"))),
        "lack model.layers.1.mlp.down_proj.weight",
        "config and weights disagree",
    ),
    row(
        "K2-07+bin",
        lambda c: zoo.load_model(
            damaged(c, lambda sd, cfg: drop(sd, "layers.0.self_attn.k_proj"), pickle=True)
        ),
        "lack model.layers.0.self_attn.k_proj.weight",
    ),
    row(
        "K2-07+cls",
        lambda c: zoo.load_model(
            damaged(c, lambda sd, cfg: drop(sd, "model.norm")), task="sequence-classification"
        ),
        "lack model.norm.weight",
    ),
    row(
        "K2-08",
        lambda c: zoo.load_model(
            damaged(c, lambda sd, cfg: nan_in(sd, "layers.0.self_attn.q_proj"))
        ),
        "layers.0.self_attn.q_proj.weight",
        "NaN or inf",
    ),
    row(
        "K2-09",
        lambda c: zoo.load_model(damaged(c, lambda sd, cfg: cfg.update(num_hidden_layers=5))),
        "lack model.layers.4.",
        "config and weights disagree",
    ),
    row(
        "K2-10",
        lambda c: zoo.load_model(damaged(c, lambda sd, cfg: cfg.update(num_hidden_layers=3))),
        "hold model.layers.3.",
        "no place for",
    ),
    row(
        "K2-10+base",
        lambda c: zoo.load_model(
            damaged(c, lambda sd, cfg: cfg.update(num_hidden_layers=2)), task="base"
        ),
        "hold model.layers.",
        "no place for",
    ),
    row(
        "K2-11",
        lambda c: zoo.load_model(damaged(c, lambda sd, cfg: cfg.update(hidden_size=384))),
        "in the weights but",
        "config and weights disagree",
        "!ignore_mismatched_sizes",
    ),
    row(
        "K2-12",
        lambda c: zoo.load_model(damaged(c, lambda sd, cfg: cfg.update(vocab_size=976))),
        "[969, 192] in the weights but [976, 192]",
    ),
    row(
        "K2-cp1",
        lambda c: zoo.load_model(damaged(c, lambda sd, cfg: None, flip_weights=True)),
        "model.safetensors has sha256",
        "build-zoo --out",
    ),
    row(
        "K2-cp2",
        lambda c: zoo.load_tokenizer(
            str(write(damaged(c, lambda sd, cfg: None) / "tokenizer.json", "{}").parent) + "/"
        ),
        "tokenizer.json has sha256",
    ),
    row(
        "K2-cp3",
        lambda c: zoo.load_config(
            write(damaged(c, lambda sd, cfg: None) / "provenance.json", "[1]").parent
        ),
        "provenance.json is damaged",
    ),
    row(
        "K2-20",
        lambda c: (
            torch.cuda.is_available() and pytest.skip("a CUDA GPU is here"),
            zoo.load_model("zoo-llama", device_map="cuda"),
        ),
        "device_map='cuda'",
        "torch.cuda.is_available() is False",
        "!git checkout",
    ),
    row(
        "K2-21",
        lambda c: zoo.load_model("zoo-llama", task="sequence-classification", num_labels=0),
        "num_labels must be a positive integer",
    ),
    row(
        "K2-24",
        lambda c: zoo.load_tokenizer(
            damaged(c, lambda sd, cfg: None, drop_files=("tokenizer.json", "tokenizer_config.json"))
        ),
        "has no tokenizer files",
        "save_pretrained",
    ),
    row("K2-26", lambda c: zoo.load_model("tiny-llama", seed="abc"), "seed", "0..2**32-1"),
    row("K2-27", lambda c: zoo.load_model("tiny-llama", seed=2**70), "seed", "0..2**32-1"),
    row("K2-28", lambda c: zoo.load_model("tiny-llama", seed=1.5), "seed", "1.5"),
    row(
        "K2-29",
        lambda c: zoo.load_model("tiny-llama", random_init=False),
        "random-initialised by design",
        "!git checkout",
    ),
    row(
        "K2-32",
        lambda c: zoo.load_model("zoo-llama", dtype=torch.float8_e4m3fn),
        "float8",
        "torch.bfloat16",
        "!git checkout",
    ),
    row(
        "K2-35",
        lambda c: zoo.load_model("zoo-llama", load_in_4bit=True),
        "transformers 5",
        "quantization_config=BitsAndBytesConfig",
        "!git checkout",
    ),
    row(
        "K2-36",
        lambda c: zoo.load_model("zoo-llama", bogus_kwarg=1),
        "bogus_kwarg",
        "accepted:",
        "!git checkout",
    ),
    row(
        "K2-36+random",
        lambda c: zoo.load_model("tiny-llama", bogus_kwarg=1),
        "bogus_kwarg",
        "!git checkout",
    ),
    row("K2-41", lambda c: zoo.load_model("zoo-llama", task=["causal-lm"]), "unknown task"),
    # --- data: a cut, emptied or changed file is refused by its recorded sha256 ----------------
    row("DS-02", lambda c: gen().make_sentiment(n=-5), "n must be an integer >= 0", "-5"),
    row("DS-03", lambda c: gen().make_sentiment(n=True), "n must be an integer >= 0", "True"),
    row("DS-04", lambda c: gen().make_chat(seed="x"), "seed must be an integer in 0..2**32-1"),
    row(
        "DS-08",
        lambda c: (cut(data_copy(c) / "chat" / "train.jsonl", lines=0.5), loaders().load_chat()),
        "chat/train.jsonl has sha256",
        "build-data",
    ),
    row(
        "DS-08+readme",
        lambda c: (
            cut(data_copy(c, readme=True) / "chat" / "test.jsonl", lines=0.5),
            loaders().load_chat("test"),
        ),
        "chat/test.jsonl has sha256",
    ),
    row(
        "DS-09",
        lambda c: (cut(data_copy(c) / "corpus" / "train.txt", 1 / 3), loaders().load_corpus()),
        "corpus/train.txt has sha256",
        "git checkout data/",
    ),
    row(
        "DS-10",
        lambda c: (
            write(data_copy(c) / "sentiment" / "train.jsonl", ""),
            loaders().load_sentiment("train"),
        ),
        "sentiment/train.jsonl has sha256",
    ),
    row(
        "DS-10+missing",
        lambda c: (
            (data_copy(c) / "corpus" / "validation.txt").unlink(),
            loaders().load_corpus("validation"),
        ),
        "corpus/validation.txt is missing",
        "build-data",
    ),
    # --- course, slides, bundle, build-zoo, catch_up: one line, before anything is written -----
    row(
        "C2-09",
        lambda c: cli("course", "--timeout", "0", str(toy_nb(c))),
        "--timeout",
        "-1 for no limit",
    ),
    row(
        "C2-13",
        lambda c: cli("course", "--with-solutions", str(toy_nb(c)), str(toy_nb(c))),
        "is a file, not a folder",
    ),
    row(
        "C2-18",
        lambda c: (
            c.mp.setattr(runner(), "BUILD_DIR", write(c.tmp / "build", "a file")),
            cli("course", str(toy_nb(c))),
        ),
        "build is a file, not a folder",
    ),
    row(
        "C2-18+exercises",
        lambda c: (
            c.mp.setattr(runner(), "BUILD_DIR", write(c.tmp / "build", "a file")),
            cli("course", "--exercises", str(toy_nb(c))),
        ),
        "build is a file, not a folder",
    ),
    row(
        "S3-01",
        lambda c: cli("slides", "--out", str(c.tmp / "d"), str(write(c.tmp / "07_b.ipynb", "{x"))),
        "07_b.ipynb is not a notebook",
        "saved by Jupyter",
    ),
    row(
        "S3-02",
        lambda c: cli("slides", "--structure", str(write(c.tmp / "08_e.ipynb", ""))),
        "08_e.ipynb is not a notebook",
    ),
    row(
        "S3-03",
        lambda c: cli("slides", "--out", str(write(c.tmp / "afile", "x")), str(toy_nb(c))),
        "afile is a file, not a folder",
    ),
    row(
        "S3-04",
        lambda c: cli("slides", "--structure", "--times", str(write(c.tmp / "r.json", "{x"))),
        "r.json is not valid JSON",
        "course-report.json",
    ),
    row(
        "S3-05",
        lambda c: cli("slides", "--structure", "--times", str(write(c.tmp / "r.json", "[1]"))),
        "holds no list of notebooks",
    ),
    row(
        "S3-06",
        lambda c: cli(
            "slides", "--structure", "--times", str(report(c, "05_int8_quantization", "10"))
        ),
        "has seconds '10'",
        "seconds >= 0",
    ),
    row(
        "S3-07",
        lambda c: cli(
            "slides", "--structure", "--times", str(report(c, "05_int8_quantization", -50))
        ),
        "has seconds -50",
        "seconds >= 0",
    ),
    row(
        "S3-07+nan",
        lambda c: cli(
            "slides", "--structure", "--times", str(report(c, "05_int8_quantization", "NaN"))
        ),
        "has seconds nan",
    ),
    row(
        "S3-10",
        lambda c: cli("slides", "--out", "/proc/labkit-slides", str(toy_nb(c))),
        "cannot write into /proc/labkit-slides",
    ),
    row(
        "B-02",
        lambda c: cli("bundle", "--no-wheels", "--out", str(write(c.tmp / "afile", "x"))),
        "afile is a file, not a folder",
    ),
    row(
        "B-04",
        lambda c: bundle().tracked_files(
            git_repo(c, {"a.txt": "a", "b.txt": "b"}, delete=["b.txt"])
        ),
        "1 tracked file(s) are missing on disk (b.txt)",
        "git checkout -- FILE",
    ),
    row(
        "B-05",
        lambda c: bundle().pack_repository(
            c.tmp / "out" / "course.tar.gz", git_repo(c, {"data/x.txt": "x"}, damage="data/x.txt")
        ),
        "data/x.txt has sha256",
    ),
    row(
        "B-01+",
        lambda c: bundle().cli_main(["--check", "--out", str(fake_bundle(c, precious=True))]),
        "holds files an earlier bundle check did not write",
    ),
    row(
        "C7",
        lambda c: cli("build-zoo", "--out", str(write(c.tmp / "m" / "x", "mine").parent)),
        "replaces only a model folder it wrote",
        "!--force",
    ),
    row(
        "Z-BZ1",
        lambda c: cli(
            "build-zoo",
            "--out",
            str(write(c.tmp / "x" / "sub" / "data.csv", "1").parent.parent),
            "--force",
        ),
        "holds files build-zoo did not write (sub)",
        "never other files",
    ),
    row(
        "Z-BZ1+extra",
        lambda c: cli(
            "build-zoo",
            "--out",
            str(write(zoo_copy(c) / "notes.txt", "my notes").parent),
            "--force",
        ),
        "did not write (notes.txt)",
    ),
    row(
        "R2-01",
        lambda c: catch_up().run_until("05", 4),
        "heading must be a string",
        "Absmax",
    ),
    row(
        "R2-02",
        lambda c: catch_up().run_until(5, "4"),
        "notebook must be a string",
        "05",
    ),
    row(
        "R2-05",
        lambda c: catch_up().run_until(str(write(c.tmp / "bad.ipynb", "{not json")), "1"),
        "bad.ipynb is not a notebook",
    ),
    row(
        "R2-06",
        lambda c: catch_up().run_until("05", "1", namespace=[]),
        "namespace must be a dict",
        "!code cell",
    ),
    row(
        "S2-01",
        lambda c: importlib.import_module("labkit.course.exercises").check(["05.1"], 1),
        "unknown exercise ['05.1']",
        "05.1",
    ),
    # --- commands ---------------------------------------------------------------------------------
    row("C1", lambda c: cli("frobnicate"), "unknown command 'frobnicate'", "estimate"),
    row("C2+", lambda c: cli("zoo", "--bogus"), "unrecognized arguments: --bogus"),
    row("C6", lambda c: cli("build-zoo", "--steps", "0"), "--steps", "positive integer"),
    row("C8", lambda c: cli("build-zoo", "--steps", "abc"), "--steps", "positive integer"),
    row("C6+", lambda c: cli("build-zoo", "--threads", "-2"), "--threads", "positive integer"),
    row("C6+seed", lambda c: cli("build-zoo", "--seed", "-1"), "--seed", "0..2**32-1"),
    row(
        "C7+file",
        lambda c: cli("build-zoo", "--out", str(write(c.tmp / "f", "x")), "--force"),
        "is a file",
    ),
    row(
        "C7+parent",
        lambda c: cli("build-zoo", "--out", str(c.tmp / "no" / "such"), "--force"),
        "does not exist",
    ),
    row(
        "C9",
        lambda c: cli("build-data", "--force"),
        "unrecognized arguments: --force",
    ),
    row(
        "C10",
        lambda c: cli("course", str(write(c.tmp / "bad.ipynb", "{not a notebook"))),
        "bad.ipynb",
        "not a notebook",
    ),
    row(
        "E5",
        lambda c: cli("estimate", "llama-3.1-8b", "--batch", "0"),
        "--batch",
        "positive integer",
    ),
    row("E21", lambda c: cli("estimate", "llama-3.1-8b", "--zero", "4"), "invalid choice: '4'"),
    row(
        "E40",
        lambda c: cli("estimate", "llama-3.1-8b", "--fit", "24", "--levers", "fused"),
        "unknown lever 'fused'",
        "chunked_loss",
    ),
    row(
        "E40+",
        lambda c: cli(
            "estimate", "llama-3.1-8b", "--method", "full", "--fit", "4", "--levers", "auto"
        ),
        "nothing fits 4 GiB",
        "smallest predicted peak",
    ),
    row(
        "E41",
        lambda c: cli("estimate", "llama-3.1-8b", "--levers", "auto"),
        "--levers",
        "--fit GIB",
    ),
    row(
        "E41+",
        lambda c: levers_module().chunked_loss(
            zoo.load_model("zoo-llama"), torch.ones(1, 4, dtype=torch.long), chunk=0
        ),
        "chunk must be a whole number",
        ">= 1",
    ),
    row(
        "E14",
        lambda c: cli("estimate", "llama-3.1-8b", "--lora-targets", "foo", "--lora-r", "64"),
        "--lora-targets",
        "--method lora",
    ),
    row(
        "E14+",
        lambda c: cli("estimate", "llama-3.1-8b", "--dtype", "nf4"),
        "--dtype",
        "--mode infer",
    ),
    row(
        "E9",
        lambda c: cli("estimate", "gpt2", "--seq", "100000"),
        "100000",
        "1024",
    ),
    row(
        "E26cli",
        lambda c: cli("estimate", str(write(c.tmp / "list.json", "[1]"))),
        "holds a JSON list",
    ),
    row(
        "E33cli",
        lambda c: cli("estimate", str(write(c.tmp / "b.json", b"\xff\xfe"))),
        "not a text file",
    ),
    row(
        "E32cli",
        lambda c: cli("estimate", str((c.tmp / "e").mkdir() or c.tmp / "e")),
        "has no config.json",
    ),
    row(
        "E35+",
        lambda c: cli("estimate", str(write(c.tmp / "d" / "m.txt", b"\xff"))),
        "m.txt is not a text file",
    ),
    # --- estimate: sized correctly or refused, never sized as something else (sweep 2)
    row(
        "E2-01",
        lambda c: cli("estimate", cfg(c, "llama-3.1-8b", num_hidden_layers=10**6)),
        "1000000 layers",
        "1..512",
    ),
    row(
        "E2-01+meta",
        lambda c: cli("estimate", cfg(c, MIXTRAL, num_hidden_layers=10**6), "--mode", "infer"),
        "1000000 layers",
    ),
    row(
        "E2-14",
        lambda c: cli("estimate", cfg(c, "llama-3.1-8b", tie_word_embeddings="false"), "--json"),
        "tie_word_embeddings",
        "expected bool",
    ),
    row(
        "E2-14+meta",
        lambda c: mem().training_memory({**MIXTRAL, "tie_word_embeddings": "false"}),
        "transformers refuses this mixtral config",
        "tie_word_embeddings",
    ),
    row(
        "E2-14+zero",
        lambda c: cli(
            "estimate",
            str(Path(cfg(c, MIXTRAL, "d/config.json", num_attention_heads=0)).parent),
        ),
        "mixtral",
        "division",
    ),
    row(
        "E2-19",
        lambda c: cli(
            "estimate", cfg(c, "llama-3.1-8b", quantization_config=BNB4), "--mode", "infer"
        ),
        "already quantized by bitsandbytes (4-bit",
        "--dtype nf4 or --method qlora",
    ),
    row(
        "E2-19+str",
        lambda c: cli("estimate", cfg(c, "llama-3.1-8b", quantization_config="bnb")),
        "quantization_config must be a JSON object",
        "'bnb'",
    ),
    row(
        "E2-19+8bit",
        lambda c: mem().inference_memory(
            {
                **catalog("gpt2"),
                "quantization_config": {**BNB4, "load_in_4bit": False, "load_in_8bit": True},
            }
        ),
        "8-bit",
        "dtype='int8'",
    ),
    row(
        "E2-20",
        lambda c: cli(
            "estimate",
            cfg(c, "llama-3.1-8b", quantization_config={"quant_method": "gptq", "bits": 4}),
        ),
        "already quantized with gptq (4-bit",
        "unquantized",
    ),
    row(
        "E2-20+awq",
        lambda c: mem().weight_bytes(
            {**MIXTRAL, "quantization_config": {"quant_method": "awq", "bits": 4}}, "bf16"
        ),
        "awq",
        "unquantized",
    ),
    row(
        "E2-29",
        lambda c: cli("estimate", cfg(c, "gpt2", n_positions=0)),
        "n_positions",
        "got 0",
    ),
    row("E2-32", lambda c: cli("estimate", cfg(c, {"model_type": "bert"})), "bert is an encoder"),
    row(
        "E2-36",
        lambda c: cli("estimate", cfg(c, MIXTRAL, num_local_experts=0), "--json"),
        "2 of 0 experts",
        "num_experts_per_tok",
    ),
    row(
        "E2-38",
        lambda c: cli(
            "estimate",
            cfg(
                c, {"model_type": "bart", "d_model": 768, "encoder_layers": 6, "vocab_size": 50265}
            ),
        ),
        "bart is an encoder-decoder model",
        "decoder-only",
    ),
    row(
        "E2-39",
        lambda c: cli("estimate", cfg(c, {"model_type": "whisper", "d_model": 384}), "--json"),
        "whisper is an encoder-decoder model",
    ),
    row(
        "Q2-int8+threshold0",  # bitsandbytes' 0.0 means "no decomposition"; here it meant all-float
        lambda c: __import__("labkit.quant.integer", fromlist=["x"]).llm_int8_linear(
            torch.ones(2, 4), torch.ones(3, 4), threshold=0.0
        ),
        "threshold must be > 0",
        "float('inf')",
    ),
    row(
        "E2-39+llama",  # a formula family whose config says encoder-decoder: refused, not sized
        lambda c: cli("estimate", cfg(c, "llama-3.1-8b", is_encoder_decoder=True)),
        "is_encoder_decoder: true",
        "decoder-only",
    ),
    row(
        "E2-39+t5",
        lambda c: mem().inference_memory({"model_type": "t5", "vocab_size": 100}),
        "t5 is an encoder-decoder model",
    ),
    row(
        "E2-40",
        lambda c: cli(
            "estimate",
            cfg(c, {**MIXTRAL, "model_type": "gemma2", "head_dim": 16, "sliding_window": 16}),
            "--mode",
            "infer",
            "--seq",
            "64",
        ),
        "gemma2 has no SDPA attention",
        "use --attention eager",
    ),
    row("E2-41", lambda c: cli("estimate", "minilm"), "bert is an encoder"),
    row(
        "E2-43",
        lambda c: cli(
            "estimate", str(((c.tmp / "d" / "config.json").mkdir(parents=True), c.tmp / "d")[1])
        ),
        "config.json is a folder",
    ),
    row(
        "E2-62",
        lambda c: cli("estimate", "llama-3.1-8b", "--mode", "infer", "--method", "qlora"),
        "--method",
        "--mode infer ignores",
    ),
    row(
        "E2-63",
        lambda c: cli(
            "estimate",
            "llama-3.1-8b",
            "--mode",
            "infer",
            "--optimizer",
            "sgd",
            "--precision",
            "fp32",
            "--checkpointing",
            "--grad-accum",
            "64",
        ),
        "--precision --optimizer --grad-accum --checkpointing",
        "accepted with it: --batch",
    ),
    row(
        "E2-65",
        lambda c: cli(
            "estimate",
            "llama-3.1-8b",
            "--mode",
            "infer",
            "--method",
            "frozen",
            "--frozen-layers",
            "4",
        ),
        "--method --frozen-layers",
    ),
    row(
        "E2-66",
        lambda c: cli("estimate", "gpt2", "--mode", "infer", "--seq", "100000"),
        "100000",
        "1024 learned positions",
    ),
    row(
        "E2-77",
        lambda c: cli(
            "estimate", "llama-3.1-8b", "--method", "lora", "--lora-targets", "all-linear,q_proj"
        ),
        "all-linear, which stands alone",
    ),
    row(
        "E2-85",
        lambda c: cli("estimate", "bloom-560m", "--mode", "infer"),
        "bloom has no SDPA attention",
        "use --attention eager",
    ),
    # --- tune -----------------------------------------------------------------------------------
    row("TU11", lambda c: cli(*tune_argv(c.tmp, "--seed", "-1")), "seed", "0..2**32-1"),
    row("TU22", lambda c: cli(*tune_argv(c.tmp, "--seed", "5000000000")), "seed"),
    row("TU1", lambda c: cli(*tune_argv(c.tmp, trials="0")), "n_trials must be a positive integer"),
    row(
        "TU4",
        lambda c: cli("tune", "--storage", "study.db", "--study-name", "s", "--n-trials", "2"),
        "not a database URL",
        "sqlite:///",
    ),
    row("TU9+", lambda c: cli(*tune_argv(c.tmp, "--timeout", "-5", trials="2")), "timeout"),
    row(
        "T2-02",
        lambda c: cli("tune", "--storage", SECRET_URL, "--study-name", "s", "--n-trials", "1"),
        "learner:***@127.0.0.1",
        "!S3cretPassw0rd",
    ),
    row(
        "T2-03",
        lambda c: cli("tune", *memory_argv("sqlite:///:memory:")),
        "in-memory database",
        "sqlite:///path/to/study.db",
    ),
    row("T2-04", lambda c: cli("tune", *memory_argv("sqlite://")), "in-memory database"),
    row(
        "T2-08+folder",
        lambda c: cli("tune", *memory_argv(f"sqlite:///{c.tmp}")),
        "is a folder",
        "study.db",
    ),
    row(
        "T2-08+nofolder",
        lambda c: cli("tune", *memory_argv(f"sqlite:///{c.tmp / 'no' / 's.db'}")),
        "does not exist",
    ),
    row(
        "T2-07",
        lambda c: cli("tune", *memory_argv("mysql://root:Pw0rd@127.0.0.1:1/db")),
        "root:***@",
        "!Pw0rd",
    ),
    row(
        "T2-08",
        lambda c: cli(*tune_argv(c.tmp, db=sqlite_file(c, "app.db", "customers"))),
        "app.db is another program's SQLite database (tables: customers)",
        "new file name",
    ),
    row(
        "T2-09",
        lambda c: cli(*tune_argv(c.tmp, db=sqlite_file(c, "other.db", "alembic_version"))),
        "(tables: alembic_version), not an Optuna study storage",
    ),
    row(
        "T2-10",
        lambda c: cli(*tune_argv(c.tmp, "--budget", "smoke", db=damaged_study(c), trials="3")),
        "d.db is damaged or not an SQLite database",
        "restore it from a copy",
    ),
    row(
        "T2-14b",
        lambda c: cli(*tune_argv(c.tmp, "--budget", "smoke", db=foreign_study(c), trials="2")),
        "holds trials of another search",
        "parameter 'dropout', which this search does not have",
        "new --study-name",
    ),
    row(
        "T2-14",
        lambda c: cli(
            *tune_argv(c.tmp, "--budget", "smoke", db=foreign_study(c, "learning_rate"), trials="4")
        ),
        "'learning_rate' over FloatDistribution(high=0.5",
        "new --study-name",
    ),
    row(
        "T2-25d",
        lambda c: cli(*tune_argv(c.tmp, "--budget", "smoke", "--gpu-memory", "1e-9", trials="2")),
        "--gpu-memory 1e-09 GiB is below the smallest trial's estimated",
        "no trial could train",
        "accepted: at least",
    ),
    row("TU8", lambda c: cli(*tune_argv(c.tmp, study=" ", trials="2")), "study name is empty"),
    row(
        "TU18",
        lambda c: cli(*tune_argv(c.tmp, "--budget", "huge", trials="2")),
        "invalid choice: 'huge'",
    ),
    row(
        "TU13",
        lambda c: (
            __import__("optuna").create_study(
                storage=f"sqlite:///{c.tmp / 'm.db'}",
                study_name="m",
                directions=["maximize", "maximize"],
            ),
            cli(*tune_argv(c.tmp, "--budget", "smoke", db="m.db", study="m")),
        ),
        "2 objectives",
        "new --study-name",
    ),
    row(
        "TU19",
        lambda c: (
            c.mp.setenv("LABKIT_THREADS", "0"),
            cli(*tune_argv(c.tmp, "--budget", "smoke", db="t.db")),
        ),
        "LABKIT_THREADS",
    ),
    row(
        "TU20",
        lambda c: (
            c.mp.setenv("LABKIT_THREADS", "two"),
            cli(*tune_argv(c.tmp, "--budget", "smoke", db="t.db")),
        ),
        "LABKIT_THREADS",
        "'two'",
    ),
    row(
        "T1",
        lambda c: importlib.import_module("labkit.training.tuning.coordination").open_storage(None),
        "not a database URL",
    ),
    row(
        "T4",
        lambda c: importlib.import_module("labkit.training.tuning").get_budget("huge"),
        "unknown budget 'huge'",
        "smoke",
    ),
    row(
        "T8+",
        lambda c: importlib.import_module("labkit.training.tuning.coordination").check_request(
            "sqlite:///x.db", "s", 3, None, "smoke", seed=np.int64(-3)
        ),
        "seed",
    ),
    # --- memory (fixes after the arch merge) ------------------------------------------------------
    row("M1", lambda c: mem().training_memory("llama-3.1-8b", batch=0), "batch"),
    row("M7", lambda c: mem().kv_cache_bytes("llama-3.1-8b", 1, 0), "context length"),
    row("M14", lambda c: mem().training_days(7e9, 1e12, 0, 1e14), "number of GPUs"),
    row(
        "M2",
        lambda c: mem().training_memory("llama-3.1-8b", seq=np.int64(0)),
        "sequence length must be a positive integer, got 0",
    ),
    row(
        "M9+",
        lambda c: mem().training_memory("gpt2", seq=4096),
        "4096",
        "1024",
    ),
    row(
        "M11",
        lambda c: importlib.import_module("labkit.memory.rules").rule_weights(7e9, "nf4"),
        "unknown",
        "nf4",
        "fp16",
    ),
    row("M12", lambda c: mem().nf4_bytes(-1000), "-1000"),
    row("M13", lambda c: mem().nf4_bytes(4096, blocksize=0), "blocksize"),
    row(
        "M15",
        lambda c: mem().training_days(7e9, 1e12, 8, float("nan")),
        "nan",
    ),
    row("M2-01", lambda c: mem().training_flops(-7e9, 1e12), "parameters", ">= 0", "-7"),
    row("M2-01+", lambda c: mem().training_flops(7e9, float("nan")), "tokens", "nan"),
    row("M2-02", lambda c: rules().rule_training_8x(float("nan")), "parameters", "nan"),
    row("M2-03", lambda c: rules().rule_inference_2x(-1e9), "parameters", ">= 0"),
    row("M2-03+", lambda c: rules().rule_training_12("7e9"), "parameters", "'7e9'"),
    row(
        "M2-07",
        lambda c: importlib.import_module("labkit.memory.sharding").gpus_needed(
            mem().training_memory("tiny-llama"), float("nan")
        ),
        "GPU memory",
        "nan",
    ),
    row(
        "M2-08",
        lambda c: mem().weight_bytes("gpt2", "nf4", double_quant="no"),
        "double_quant must be True or False",
        "'no'",
    ),
    row(
        "M2-09",
        lambda c: mem().training_memory("llama-3.1-8b", checkpointing="no"),
        "checkpointing must be True or False",
    ),
    row(
        "M2-10",
        lambda c: mem().training_memory("llama-3.1-8b", method="frozen", frozen_layers=True),
        "frozen_layers",
        "True",
    ),
    row(
        "M2-11",
        lambda c: mem().training_memory("llama-3.1-8b", method="frozen", frozen_layers=2.5),
        "frozen_layers",
        "2.5",
    ),
    # --- quant ----------------------------------------------------------------------------------
    row("Q2", lambda c: q().absmax_quantize(torch.tensor([1.0, float("nan")])), "NaN or inf"),
    row("Q5", lambda c: q().absmax_quantize(x8(), bits=1), "bits must be an integer in 2..8"),
    row(
        "Q8",
        lambda c: q().absmax_quantize(x8(), bits=np.int64(1)),
        "bits",
        "got 1",
    ),
    row(
        "Q12",
        lambda c: q().absmax_dequantize(
            q().absmax_quantize(x8(), axis=-1)[0].T, q().absmax_quantize(x8(), axis=-1)[1]
        ),
        "scale",
        "shape",
    ),
    row(
        "Q13",
        lambda c: q().absmax_dequantize(
            q().absmax_quantize(x8(), axis=-1)[0], q().absmax_quantize(x8(), axis=-1)[1][:3]
        ),
        "scale",
        "shape",
    ),
    row("Q21", lambda c: q().quant_error(x8(), [1, 2]), "tensor"),
    row(
        "Q24",
        lambda c: q().int8_matmul(
            torch.ones(2, 8, dtype=torch.int8), torch.ones(3, 5, dtype=torch.int8)
        ),
        "8",
        "5",
        "inner",
    ),
    row(
        "Q25",
        lambda c: q().llm_int8_linear(x8(), torch.randn(3, 6)),
        "8 features",
        "6",
    ),
    row("Q27", lambda c: q4().bits_per_parameter(bits=0, blocksize=0), "bits"),
    row("Q28", lambda c: q4().bits_per_parameter(bits=-4), "bits"),
    row(
        "Q37",
        lambda c: q4().nf4_dequantize(torch.rand(32), torch.ones(1), (64,)),
        "uint8",
    ),
    row(
        "Q+inf",
        lambda c: q().quant_error(x8(), torch.full((4, 8), float("inf"))),
        "inf",
    ),
    row(
        "Q2-01",
        lambda c: q().absmax_quantize(x8(), axis=-1, group_size=np.int64(3)),
        "group size 3 does not divide the axis of length 8",
    ),
    row(
        "Q2-02",
        lambda c: q().absmax_quantize(x8(), axis=-1, group_size=4.0),
        "group size must be a positive integer, got 4.0",
    ),
    row(
        "Q2-03",
        lambda c: q().absmax_quantize(x8(), axis=-1, group_size=True),
        "group size must be a positive integer, got True",
    ),
    row("Q2-04", lambda c: q().absmax_quantize(x8(), axis=True), "axis must be an integer"),
    row(
        "Q2-08",
        lambda c: q().absmax_quantize(torch.empty(4, 8, device="meta")),
        "meta device",
        "a tensor with values",
    ),
    row(
        "Q2-09",
        lambda c: q().absmax_quantize(x8().to(torch.float8_e4m3fn)),
        "float8_e4m3fn",
        "torch.bfloat16",
    ),
    row(
        "Q2-14",
        lambda c: q().llm_int8_linear(x8(), torch.randn(3, 8), threshold=float("nan")),
        "threshold must be a number (not NaN), got nan",
    ),
    row(
        "Q2-16",
        lambda c: q().llm_int8_linear(x8(), torch.randn(3, 8), threshold="6"),
        "threshold",
        "'6'",
    ),
    row(
        "Q2-19",
        lambda c: q4().nf4_quantize(torch.randn(128), blocksize=np.int64(48)),
        "do not split into blocks of 48",
    ),
    row(
        "Q2-23",
        lambda c: importlib.import_module("labkit.quant.layers").quantize_model("zoo-llama"),
        "torch.nn.Module",
        "zoo.load_model('zoo-llama')",
    ),
    # --- precision --------------------------------------------------------------------------------
    row(
        "P4",
        lambda c: importlib.import_module("labkit.quant.formats").encode(0, 300, 0, "bf16"),
        "exponent field 300",
    ),
    row(
        "P3",
        lambda c: importlib.import_module("labkit.quant.formats").decode("abc", "bf16"),
        "'abc'",
        "number",
    ),
    row(
        "P5",
        lambda c: importlib.import_module("labkit.quant.formats").encode(0, 127.9, 0, "bf16"),
        "127.9",
        "integer",
    ),
    row(
        "P2-05",
        lambda c: importlib.import_module("labkit.quant.formats").decode(10**400, "fp32"),
        "401 digits",
        "float64",
    ),
    row(
        "P2-12",
        lambda c: importlib.import_module("labkit.quant.formats").round_to([1.0, "a"], "bf16"),
        "x must be a number, a list of numbers or a tensor",
    ),
    row(
        "P2-13",
        lambda c: importlib.import_module("labkit.quant.formats").representable_values(
            "fp8_e4m3", "yes"
        ),
        "lo",
        "'yes'",
    ),
    # --- peft -------------------------------------------------------------------------------------
    row("F8", lambda c: lp().make_config("lora-x"), "unknown PEFT method 'lora-x'"),
    row(
        "F12",
        lambda c: lp().count_trainable(lp().make_config("lora", r=0), "zoo-llama"),
        "r",
        "positive",
    ),
    row(
        "F21",
        lambda c: lp().count_trainable(lp().make_config("lora", r=-4), "zoo-llama"),
        "r",
        "positive",
    ),
    row(
        "F5",
        lambda c: lp().count_trainable(
            lp().make_config("prompt", num_virtual_tokens=-3), "zoo-llama"
        ),
        "num_virtual_tokens",
    ),
    row(
        "F22",
        lambda c: lp().make_config("prompt", num_virtual_tokens=0),
        "num_virtual_tokens",
    ),
    row("F7", lambda c: lp().make_config("lora", foo=1), "foo", "accepted"),
    row(
        "F13",
        lambda c: lp().attach("tiny-llama", "lora", target_modules=["foo"]),
        "matches no module",
    ),
    row(
        "F15",
        lambda c: lp().attach("tiny-llama", "lora", r=0),
        "r",
        "positive",
    ),
    row(
        "F18",
        lambda c: lp().attach("tiny-llama", "lora", lora_dropout=1.5),
        "lora_dropout",
    ),
    row(
        "F+r-huge",
        lambda c: lp().count_trainable(lp().make_config("lora", r=10**6), "zoo-llama"),
        "rank",
        "larger",
    ),
    row(
        "F2-01",
        lambda c: lp().attach("tiny-llama", "lora", lora_alpha=float("nan")),
        "lora_alpha",
        "nan",
    ),
    row("F2-02", lambda c: lp().attach("tiny-llama", "lora", lora_alpha=0), "lora_alpha", "> 0"),
    row("F2-07", lambda c: lp().attach("tiny-llama", "lora", seed="x"), "seed", "0..2**32-1"),
    row(
        "F2-08",
        lambda c: lp().count_trainable(
            lp().make_config("prompt", num_virtual_tokens=10**6), "zoo-llama"
        ),
        "num_virtual_tokens=1000000",
        "context of 256",
        "1..255",
    ),
    row(
        "F2-08+attach",
        lambda c: lp().attach("tiny-llama", "prefix", num_virtual_tokens=256),
        "num_virtual_tokens=256",
        "1..255",
    ),
    row("F2-09", lambda c: lp().make_config("prompt-text", init_text=""), "init_text", "non-empty"),
    row("F2-09+", lambda c: lp().make_config("prompt-text", init_text=["a"]), "init_text", "str"),
    row("F2-14", lambda c: lp().attach("minilm", "prefix"), "bert is an encoder", "accepted"),
    row(
        "F2-12+",
        lambda c: lp().make_config("lora", target_modules=5),
        "target_modules",
        "list of strings",
    ),
    row("F2-14+", lambda c: lp().trainable_parameters(None), "model must be a torch model"),
    row(
        "F2-14+opt",
        lambda c: lp().training_state_bytes(c.tiny[0], optimizer="adam", batch={}),
        "optimizer must be a torch optimizer",
    ),
    row(
        "A2-04+std",
        lambda c: ad().randomize_lora(lp().attach("tiny-llama", "lora"), std=float("nan")),
        "std",
        "nan",
    ),
    row(
        "A2-04+seed",
        lambda c: ad().randomize_lora(lp().attach("tiny-llama", "lora"), seed="x"),
        "seed",
        "0..2**32-1",
    ),
    row("A2-03+plain", lambda c: ad().hand_merge_max_diff(c.tiny[0]), "not a PeftModel"),
    # --- adapters / quantized merge ---------------------------------------------------------------
    row("A2-01+", lambda c: ad().sample_inputs("1000"), "vocab_size", "positive integer"),
    row("A2-02", lambda c: ad().sample_inputs(1000, batch=2.5), "batch", "positive integer"),
    row(
        "A2-03",
        lambda c: ad().max_logit_diff(torch.zeros(0), torch.zeros(0)),
        "logits are empty",
    ),
    row(
        "A2-04",
        lambda c: ad().logits_close(torch.ones(2, 3), torch.ones(2, 3), atol=float("nan")),
        "atol",
        "nan",
    ),
    row(
        "A2-08",
        lambda c: importlib.import_module("labkit.tuners.quantized_merge").bnb_4bit_config(
            "nf4", compute_dtype=torch.int8
        ),
        "compute dtype torch.int8",
        "torch.bfloat16",
    ),
    # --- measure / training / evaluation / datasets ---------------------------------------------
    row(
        "X1",
        lambda c: importlib.import_module("labkit.memory.measure").make_optimizer(
            c.tiny[0], "lion"
        ),
        "unknown optimizer 'lion'",
    ),
    row(
        "X3",
        lambda c: importlib.import_module("labkit.memory.measure").saved_tensor_bytes(
            c.tiny[0], torch.zeros(1, 8)
        ),
        "input_ids",
        "integer",
    ),
    row(
        "X4",
        lambda c: importlib.import_module("labkit.memory.measure").saved_tensor_bytes(
            c.tiny[0], torch.full((1, 8), 5000)
        ),
        "5000",
        "vocab",
    ),
    row(
        "X4+seq",
        lambda c: importlib.import_module("labkit.memory.measure").saved_tensor_bytes(
            zoo.load_model("tiny-gpt2"), torch.ones(1, 300, dtype=torch.long)
        ),
        "300",
        "256",
    ),
    row(
        "R1",
        lambda c: importlib.import_module("labkit.training.finetune").chat_features(
            c.tiny[1], [{"prompt": "a", "response": "b"}], target="answer"
        ),
        "unknown target",
    ),
    row(
        "R2",
        lambda c: importlib.import_module("labkit.training.finetune").chat_features(
            c.tiny[1], [{"prompt": "Human: hi\nAssistant:"}]
        ),
        "response",
        "row 0",
    ),
    row(
        "R7",
        lambda c: importlib.import_module("labkit.training.finetune").train(*c.tiny, rows=[]),
        "rows",
        "empty",
    ),
    row(
        "R9",
        lambda c: importlib.import_module("labkit.training.finetune").train(
            *c.tiny, rows=[{"prompt": "a", "response": "b"}], evaluation_strategy="epoch"
        ),
        "evaluation_strategy",
        "eval_strategy",
    ),
    row(
        "R10",
        lambda c: importlib.import_module("labkit.training.finetune").train(
            *c.tiny, rows=[{"prompt": "a", "response": "b"}], num_train_epochs=-1
        ),
        "num_train_epochs",
    ),
    row(
        "R8",
        lambda c: importlib.import_module("labkit.training.finetune").train(
            *c.tiny, rows=[{"prompt": "a", "response": "b"}], learning_rate=float("nan")
        ),
        "learning_rate",
        "nan",
    ),
    row(
        "R2-10",
        lambda c: ft().exact_match("abc", "abd"),
        "predictions is one string",
        "a list of strings",
    ),
    row("R2-11", lambda c: ft().exact_match([1], [1]), "predictions[0] is int", "list of strings"),
    row(
        "R2-12",
        lambda c: ft().generate_answers(*c.tiny, "Human: hi\nAssistant:"),
        "prompts is one string",
        "wrap it",
    ),
    row(
        "R2-13",
        lambda c: ft().generate_answers(*c.tiny, ["Human: hi\nAssistant:"], max_new_tokens=0),
        "max_new_tokens must be a positive integer",
    ),
    row(
        "R2-15",
        lambda c: ft().evaluate_chat(*c.tiny, split="validation", limit=-1),
        "limit",
        "positive integer",
        "None for all",
    ),
    row("R2-16", lambda c: ft().evaluate_chat(*c.tiny, limit=0), "limit", "got 0"),
    row(
        "R2-17",
        lambda c: ft().train(*c.tiny, rows=CHAT, weight_decay=float("nan")),
        "weight_decay",
        "nan",
    ),
    row(
        "R2-17+beta",
        lambda c: ft().train(*c.tiny, rows=CHAT, adam_beta2=1.0),
        "adam_beta2",
        "[0, 1)",
    ),
    row(
        "R2-18",
        lambda c: ft().train(*c.tiny, rows=CHAT, per_device_train_batch_size=0),
        "per_device_train_batch_size must be a positive integer",
    ),
    row(
        "R2-19",
        lambda c: ft().train(
            zoo.load_model("tiny-llama").requires_grad_(False), c.tiny[1], rows=CHAT
        ),
        "every parameter of the model is frozen",
        "attach a PEFT method",
    ),
    row(
        "R2-23",
        lambda c: ft().train(*c.tiny, rows=CHAT, gradient_accumulation_steps=0),
        "gradient_accumulation_steps must be a positive integer",
    ),
    row(
        "R2-16+target",
        lambda c: ft().evaluate_chat(*c.tiny, target="bogus", limit=1),
        "unknown target 'bogus'",
        "response",
    ),
    row(
        "R2-17+eval",
        lambda c: ft().training_arguments(eval_strategy="bogus"),
        "TrainingArguments refused these settings",
        "bogus is not a valid IntervalStrategy",
    ),
    row("R2-17+seed", lambda c: ft().training_arguments(seed=-1), "seed", "0..2**32-1"),
    row("R2-18+steps", lambda c: ft().training_arguments(max_steps="10"), "max_steps", "'10'"),
    row(
        "R2-10+table",
        lambda c: ft().side_by_side(CHAT * 3, ["a"] * 2, ["b"] * 3),
        "one answer before and after per row",
        "2 before",
    ),
    row("R2-15+sbs", lambda c: ft().side_by_side(CHAT, ["a"], ["b"], n=-1), "n (rows to show)"),
    row(
        "R2-15+corpus",
        lambda c: fg().corpus_texts(n=-1),
        "n (stories) must be a positive integer",
        "-1",
    ),
    row("R2-11+counts", lambda c: fg().probe_items(counts="x"), "counts", "integer >= 0"),
    row("R2-11+per_fact", lambda c: fg().probe_items(per_fact="1"), "per_fact", "'1'"),
    row("R2-18+replay", lambda c: fg().replay_features(c.tiny[1], 10**9), "the corpus has"),
    row("R2-18+mix", lambda c: fg().replay_count(-5, 0.5), "n_task", "integer >= 0"),
    row("R2-11+cloze", lambda c: fg().cloze_items([{"intent": "home"}]), "rows[0]", "chat row"),
    row("R2-12+probe", lambda c: fg().probe_accuracy(*c.tiny, "abc"), "item 0 is str"),
    row(
        "V2-03+",
        lambda c: list(ll().text_batches(c.tiny[1], ["a b"], max_length="128")),
        "max_length must be a positive integer",
    ),
    row(
        "V2-04+",
        lambda c: ll().blocks_loss(c.tiny[0], [[1, 2, 3]]),
        "blocks must be a 2-D tensor of token ids",
        "pack(",
    ),
    row("V2-06+within", lambda c: st().within(0.5, []), "no values to summarise"),
    row("V2-06+nan", lambda c: st().within(float("nan"), [0.1, 0.2]), "value", "nan"),
    row("V2-06+slack", lambda c: st().within(0.1, [0.1, 0.2], slack=-1), "slack", ">= 0"),
    row("V2-06+gap", lambda c: st().ranges_apart("ab", [1.0]), "a must be a list of numbers"),
    row(
        "F2-02+rank",
        lambda c: importlib.import_module("labkit.studies.lora_rank").train_point(
            c.tiny[1], 2.5, 16
        ),
        "LoRA rank r must be a positive integer",
        "2.5",
    ),
    row(
        "F2-01+alpha",
        lambda c: importlib.import_module("labkit.studies.lora_rank").update_size(
            c.tiny[1], 8, float("nan")
        ),
        "lora_alpha",
        "nan",
    ),
    row(
        "R2-15+seeds",
        lambda c: importlib.import_module("labkit.studies.peft_seeds").base_score(
            {"baseline": [1, 0, 1]}, limit=-1
        ),
        "limit (questions, or None for all) must be a positive integer",
        "-1",
    ),
    row(
        "R2-16+rank",
        lambda c: importlib.import_module("labkit.studies.lora_rank").summary(
            {"settings": {"points": []}}, limit=0
        ),
        "limit",
        "got 0",
    ),
    row(
        "V2-06+gain",
        lambda c: importlib.import_module("labkit.studies.peft_seeds").defaults_below(
            {"baseline": [1]}, float("nan")
        ),
        "min_gain",
        "nan",
    ),
    row("V2-05", lambda c: ll().perplexity(float("nan")), "loss", ">= 0", "nan"),
    row("V2-05+", lambda c: ll().perplexity(1000), "too large for a perplexity", "0..709.8"),
    row("V2-06", lambda c: ll().perplexity(-1.0), "loss", ">= 0", "-1.0"),
    row(
        "V1",
        lambda c: importlib.import_module("labkit.training.lm_loss").causal_lm_loss(*c.tiny, []),
        "no texts",
    ),
    row(
        "V3",
        lambda c: importlib.import_module("labkit.training.lm_loss").causal_lm_loss(
            *c.tiny, "a whole text"
        ),
        "list of strings",
    ),
    row(
        "V6",
        lambda c: importlib.import_module("labkit.training.lm_loss").causal_lm_loss(
            *c.tiny, [None]
        ),
        "list of strings",
    ),
    row(
        "R5",
        lambda c: importlib.import_module("labkit.data.loaders").load_chat("dev"),
        "unknown split 'dev'",
    ),
    row(
        "K4",
        lambda c: (
            c.mp.setattr(importlib.import_module("labkit.data.loaders"), "DATA_DIR", c.tmp),
            write(
                c.tmp / "chat" / "train.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "x'
            ),
            importlib.import_module("labkit.data.loaders").load_chat("train"),
        ),
        "chat/train.jsonl",
        "line 2",
    ),
]


@pytest.mark.parametrize("call, expect", ROWS)
def test_bad_input_is_one_clear_line(call, expect, tmp_path, monkeypatch, tiny_llama):
    with pytest.raises(LabkitError) as err:
        call(Ctx(tmp_path, monkeypatch, tiny_llama))
    msg = str(err.value)
    assert "\n" not in msg, msg
    for part in expect:  # "!text": text must not be in the message (a remedy for another cause)
        if part.startswith("!"):
            assert part[1:] not in msg, f"{part[1:]!r} in {msg!r}"
        else:
            assert part in msg, f"{part!r} not in {msg!r}"


def test_the_table_covers_at_least_sixty_cases():
    assert len(ROWS) >= 60 and len({r.id for r in ROWS}) == len(ROWS)


def test_gpus_needed_in_json_never_reads_as_needs_none():
    # nothing fits on 4096 x 80 GiB: 0 would read as "needs no GPU"
    assert estimate_json("llama-3.1-8b", "--batch", "1000000000000")["gpus_needed"] != 0


def test_numpy_integers_are_accepted_by_memory_and_quant():
    from labkit.memory import estimator
    from labkit.quant import codebook, integer

    sweep = np.arange(256, 1024, 256)  # e.g. sequence lengths from a numpy sweep
    assert (
        estimator.training_memory("gpt2", seq=sweep[1]).total
        == estimator.training_memory("gpt2", seq=512).total
    )
    integer.absmax_quantize(torch.ones(4, 8), bits=np.int64(4))
    # Q2-01, Q2-19: numpy integers were refused as group size and blocksize
    assert integer.absmax_quantize(torch.ones(4, 8), axis=-1, group_size=np.int64(4))[1].shape == (
        4,
        2,
    )
    assert codebook.nf4_quantize(torch.randn(128), blocksize=np.int64(64))[1].shape == (2,)
    # A2-01: a numpy vocabulary size was read as a model (AttributeError)
    from labkit.tuners import adapters

    assert adapters.sample_inputs(np.int64(1000))["input_ids"].max() < 1000
    # lm_loss.pack refused a numpy block size as "not a whole number"
    from labkit.training import lm_loss

    blocks = lm_loss.pack(zoo.load_tokenizer("tiny-llama"), ["a b c d e"] * 20, block=np.int64(16))
    assert blocks.shape[1] == 16


def test_numpy_integers_are_integers():
    from labkit.training.tuning import coordination

    assert (
        coordination.check_request(
            "sqlite:///study.db", "s", np.int64(2), None, "smoke", seed=np.uint32(7)
        ).budget.name
        == "smoke"
    )
