"""Rebuild the zoo Llama: train a BPE tokenizer on the course corpus and pretrain a small Llama.

``python -m labkit build-zoo`` writes ``data/models/zoo-llama/`` (config.json, model.safetensors,
tokenizer files, provenance.json). It is seeded and runs on a fixed thread count, so the same
command on the same software gives the same weights; the provenance file records the seed, steps,
tokens seen, final train and held-out loss, the untrained model's held-out loss, and sha256s.

``--force`` replaces only a folder this command wrote (it holds its ``provenance.json`` and
nothing but :data:`BUILT_FILES`), never a learner's files; the new folder is readable by everyone
the umask allows, as any file the learner writes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from labkit import LabkitError, hardware
from labkit.cli import Parser
from labkit.data import loaders
from labkit.files import sha256_file
from labkit.files import shown as _shown
from labkit.models.zoo import MODELS_DIR
from labkit.training.lm_loss import blocks_loss, pack

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0, 1, 2, 3
VOCAB_SIZE = 2048
CONTEXT = 256
#: Every file a build writes: a folder holding these only, with provenance.json, is the course's.
BUILT_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "provenance.json",
    }
)


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts``; adds ``<s>`` in front of every encoded text."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=CONTEXT,
        padding_side="right",
    )


def model_config(vocab_size: int = VOCAB_SIZE) -> LlamaConfig:
    """The zoo Llama: 4 layers, hidden 192, 6 heads with 2 KV heads (GQA), SwiGLU 512."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def build(
    out_dir: Path,
    steps: int = 900,
    batch: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    threads: int = 2,
    log_every: int = 100,
    max_texts: int | None = None,
) -> dict:
    """Train tokenizer and model, save to ``out_dir`` and return the provenance record.

    ``max_texts`` uses only the first stories of each split (for quick tests).
    """
    hardware.quiet_logs()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    start = time.perf_counter()
    train_text = loaders.load_corpus("train")[:max_texts]
    val_text = loaders.load_corpus("validation")[:max_texts]
    tokenizer = train_tokenizer(train_text)
    train_blocks, val_blocks = pack(tokenizer, train_text), pack(tokenizer, val_text)

    model = LlamaForCausalLM(model_config(len(tokenizer)))
    untrained_val = blocks_loss(model, val_blocks)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: (
            min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
        ),
    )
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_blocks), generator=gen)
    recent: list[float] = []
    model.train()
    for step in range(steps):
        idx = order[(torch.arange(batch) + step * batch) % len(order)]
        if (step + 1) * batch // len(order) != step * batch // len(order):
            order = torch.randperm(len(train_blocks), generator=gen)
        x = train_blocks[idx]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        recent = (recent + [loss.item()])[-50:]
        if log_every and (step + 1) % log_every == 0:
            print(
                f"step {step + 1}/{steps} loss {sum(recent) / len(recent):.3f} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    val = blocks_loss(model, val_blocks)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    files = ["model.safetensors", "tokenizer.json", "config.json"]
    record = {
        "description": "Llama pretrained from scratch on data/corpus/train.txt by labkit.course.build_zoo",
        "command": f"python -m labkit build-zoo --steps {steps} --seed {seed} --threads {threads}",
        "seed": seed,
        "threads": threads,
        "steps": steps,
        "batch_size": batch,
        "context": CONTEXT,
        "learning_rate": lr,
        "tokens_seen": steps * batch * CONTEXT,
        "corpus_tokens": {"train": train_blocks.numel(), "validation": val_blocks.numel()},
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_train_loss": round(sum(recent) / len(recent), 4),
        "heldout_loss": round(val, 4),
        "untrained_heldout_loss": round(untrained_val, 4),
        "seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
        "sha256": {f: sha256_file(out_dir / f) for f in files},
    }
    (out_dir / "provenance.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def build_into(out_dir: Path, force: bool = False, **kwargs: Any) -> dict:
    """:func:`build` into a temporary folder next to ``out_dir``, swapped in only on success.

    An existing model in ``out_dir`` is replaced only with ``force=True``, and only once the new
    one is complete: a failure or Ctrl-C during the build leaves the old folder as it was and
    removes the half-written temporary one. The old folder is moved aside, the new one renamed
    into place, then the old one deleted (two renames on the same file system).
    """
    out_dir = Path(out_dir)
    _check_out(out_dir, force)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-building-", dir=out_dir.parent))
    except OSError as err:
        raise LabkitError(
            f"cannot write into {_shown(out_dir.parent)} ({err.strerror}); accepted: --out in "
            "a writable folder"
        ) from None
    try:
        try:
            record = build(tmp, **kwargs)
        except (OSError, SafetensorError) as err:  # a full disk while saving
            why = getattr(err, "strerror", None) or str(err).splitlines()[0][:160]
            raise LabkitError(
                f"cannot write the model for {_shown(out_dir)} ({why}); the folder there was "
                "kept as it was; accepted: a writable folder with free space"
            ) from None
        _readable(tmp)
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-old-", dir=out_dir.parent))
            old.rmdir()
            out_dir.rename(old)
        try:
            tmp.rename(out_dir)
        except BaseException:
            if old is not None:
                old.rename(out_dir)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return record


def _check_out(out_dir: Path, force: bool) -> None:
    """Refuse an ``--out`` build-zoo may not write: a file, a missing parent, a folder of files it
    did not write (with or without ``--force``), or its own model without ``--force``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise LabkitError(f"--out {out_dir} is a file; accepted: a folder (new or a zoo model)")
    if not out_dir.parent.is_dir():
        raise LabkitError(f"--out {out_dir}: folder {out_dir.parent} does not exist")
    entries = list(out_dir.iterdir()) if out_dir.is_dir() else []
    if not entries:
        return
    foreign = sorted(p.name for p in entries if p.name not in BUILT_FILES or not p.is_file())
    if foreign or not (out_dir / "provenance.json").is_file():
        what = (
            f"files build-zoo did not write ({', '.join(foreign[:3])})"
            if foreign
            else "files but no provenance.json"
        )
        raise LabkitError(
            f"{_shown(out_dir)} holds {what}: build-zoo replaces only a model folder it wrote "
            "itself, never other files; accepted: a new or empty folder, or move those files away"
        )
    if not force:
        raise LabkitError(f"{_shown(out_dir)} already holds a model; pass --force to replace it")


def _readable(folder: Path) -> None:
    """Give a built folder the permissions of any new folder and file under the umask (mkdtemp
    makes it 0700, and other users of a shared install must read the zoo)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in 0..2**32-1, got {text!r}")
    return value


def cli_main(argv: list[str]) -> int:
    """``python -m labkit build-zoo [--out DIR] [--steps N] [--seed S] [--threads T] [--force]``."""
    parser = Parser(prog="python -m labkit build-zoo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODELS_DIR / "zoo-llama")
    parser.add_argument("--steps", type=_positive, default=900)
    parser.add_argument("--seed", type=_seed, default=0)
    parser.add_argument("--threads", type=_positive, default=2)
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing model folder (only once the new model is complete)",
    )
    args = parser.parse_args(argv)
    try:
        record = build_into(
            args.out, force=args.force, steps=args.steps, seed=args.seed, threads=args.threads
        )
    except KeyboardInterrupt:
        kept = "the model there was kept as it was" if args.out.exists() else "nothing was written"
        print(f"labkit build-zoo: interrupted; {kept} ({_shown(args.out)})", file=sys.stderr)
        return 130
    print(
        json.dumps(
            {
                k: record[k]
                for k in (
                    "parameters",
                    "tokens_seen",
                    "final_train_loss",
                    "heldout_loss",
                    "untrained_heldout_loss",
                    "seconds",
                )
            }
        )
    )
    return 0
