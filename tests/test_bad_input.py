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


def x8() -> torch.Tensor:
    return torch.randn(4, 8, generator=torch.Generator().manual_seed(0))


def lp():
    from labkit.tuners import peft_methods

    return peft_methods


def q():
    from labkit.quant import integer

    return integer


def q4():
    from labkit.quant import codebook

    return codebook


def mem():
    from labkit.memory import estimator

    return estimator


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
    # --- tune -----------------------------------------------------------------------------------
    row("TU11", lambda c: cli(*tune_argv(c.tmp, "--seed", "-1")), "seed", "0..2**32-1"),
    row("TU22", lambda c: cli(*tune_argv(c.tmp, "--seed", "5000000000")), "seed"),
    row(
        "TU1", lambda c: cli(*tune_argv(c.tmp, trials="0")), "n_trials must be a whole number >= 1"
    ),
    row(
        "TU4",
        lambda c: cli("tune", "--storage", "study.db", "--study-name", "s", "--n-trials", "2"),
        "not a database URL",
        "sqlite:///",
    ),
    row("TU9+", lambda c: cli(*tune_argv(c.tmp, "--timeout", "-5", trials="2")), "timeout"),
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
        lambda c: importlib.import_module("labkit.training.tuning").open_storage(None),
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
        lambda c: importlib.import_module("labkit.training.tuning").check_request(
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
    from labkit.quant import integer

    sweep = np.arange(256, 1024, 256)  # e.g. sequence lengths from a numpy sweep
    assert (
        estimator.training_memory("gpt2", seq=sweep[1]).total
        == estimator.training_memory("gpt2", seq=512).total
    )
    integer.absmax_quantize(torch.ones(4, 8), bits=np.int64(4))


def test_numpy_integers_are_integers():
    from labkit.training import tuning

    assert (
        tuning.check_request(
            "sqlite:///:memory:", "s", np.int64(2), None, "smoke", seed=np.uint32(7)
        )[0].name
        == "smoke"
    )
