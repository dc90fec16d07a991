"""Check that every notebook's ``MODEL_ID`` works for a model as the hub ships it, offline.

The notebooks say ``MODEL_ID`` may be a local folder or, online, a hub id such as
``Qwen/Qwen2.5-0.5B``. Such a model differs from the zoo's default in the ways that break code
written for the default: its embeddings are tied to the output layer, its checkpoint is stored
in bf16, and it is another architecture with its own sizes. This script builds a tiny one of that
kind (a random-init Qwen2 with ``tie_word_embeddings=True``, saved with ``save_pretrained`` in
bf16 beside the zoo tokenizer: ``config.json`` with ``"dtype": "bfloat16"``, ``model.safetensors``,
tokenizer files) in a temporary folder; for each notebook, it writes a copy into
``build/model_id/`` with the parameters cell's ``MODEL_ID`` set to that folder, executes it
(``labkit.course.runner.execute``; the executed copy replaces the copy) and prints one row per
notebook: ``ok``, or the first failing cell and its one-line error (``--keep-going``: every cell
runs and every failing one is listed).

It runs with no network: under ``unshare -rn`` (a user and network namespace with only loopback)
where the system allows it, and always with ``HF_HUB_OFFLINE=1``. The model is random, so a check
whose lesson needs a trained model (a tuned prompt raises exact match) is skipped there with a
printed reason (the notebooks guard it with ``zoo.DEFAULT_LM``); a failing row names its cell.

    python scripts/check_model_id.py                 # every notebook with MODEL_ID (slow)
    python scripts/check_model_id.py 04 05_int8_quantization.ipynb   # some, by number or name
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "build" / "model_id"
#: Set in the re-executed process once it runs inside its own network namespace.
NO_NET_MARK = "LABKIT_MODEL_ID_NO_NET"


def build_model(folder: Path) -> Path:
    """A tiny tied-embedding Qwen2 saved in the hub's layout in bf16, with the zoo tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from labkit.models import zoo

    tok = zoo.load_tokenizer("zoo-llama")
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=192,  # a multiple of 64, as real models: bitsandbytes' CPU 4-bit path
        # repacks its blocks of 64 per row and fails on rows of other lengths
        num_hidden_layers=8,  # real models have many: a 2-layer one is mostly its embedding
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def set_model_id(nb: nbformat.NotebookNode, value: str) -> bool:
    """Replace the ``MODEL_ID = ...`` statement of the parameters cell; False if it has none."""
    for cell in nb.cells:
        if "parameters" not in cell.metadata.get("tags", []):
            continue
        lines = cell.source.splitlines()
        for node in ast.parse(cell.source).body:
            targets = getattr(node, "targets", [])
            if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in targets] == [
                "MODEL_ID"
            ]:
                lines[node.lineno - 1 : node.end_lineno] = [f"MODEL_ID = {value!r}"]
                cell.source = "\n".join(lines)
                return True
    return False


def failures(nb: nbformat.NotebookNode) -> list[str]:
    """``cell N: Error: message`` for each cell with an error output, in order."""
    found = []
    for k, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                value = (out.get("evalue") or "").strip().splitlines()
                found.append(f"cell {k}: {out['ename']}: {value[0][:200] if value else ''}")
    return found


def notebooks(wanted: list[str]) -> list[Path]:
    """The course notebooks named (by number or file name), or all of them."""
    from labkit.course.runner import course_notebooks

    every = course_notebooks()
    if not wanted:
        return every
    chosen = [p for p in every if any(p.name.startswith(w) or p.name == w for w in wanted)]
    if not chosen:
        raise SystemExit(f"no notebook matches {wanted}; accepted: a number (04) or a file name")
    return chosen


def check(paths: list[Path], model: Path, timeout: int, keep_going: bool = False) -> int:
    """Run each notebook with MODEL_ID = model; print one row each; the number that failed."""
    from labkit.course.runner import execute

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if not set_model_id(nb, str(model)):
            print(f"{path.name:<40} skipped: no MODEL_ID in its parameters cell", flush=True)
            continue
        copy = OUT_DIR / path.name
        nbformat.write(nb, copy)
        nb, seconds, error = execute(copy, timeout=timeout, nb=nb, allow_errors=keep_going)
        nbformat.write(nb, copy)
        found = failures(nb)
        if error is not None and not found:
            found = [error]  # the kernel died or a cell timed out
        status = "; ".join(found) if found else "ok"
        failed += bool(found)
        print(f"{path.name:<40} {seconds:5.0f} s  {status}", flush=True)
    return failed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="numbers (04) or names; default: all")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    parser.add_argument(
        "--network", action="store_true", help="do not cut the network (no unshare)"
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="run every cell and list every failing one"
    )
    args = parser.parse_args(argv)
    if not args.network and not os.environ.get(NO_NET_MARK) and shutil.which("unshare"):
        probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False)
        if probe.returncode == 0:  # loopback up: the kernel and torchrun talk over 127.0.0.1
            script = 'ip link set lo up && exec "$@"'
            cmd = ["unshare", "-rn", "sh", "-c", script, "sh", sys.executable, __file__, *argv]
            env = {**os.environ, NO_NET_MARK: "1"}
            return subprocess.run(cmd, env=env, check=False).returncode
        print("unshare -rn is not allowed here: running with HF_HUB_OFFLINE=1 only", flush=True)
    os.environ["HF_HUB_OFFLINE"] = "1"
    paths = notebooks(args.notebooks)
    with tempfile.TemporaryDirectory(prefix="tied-bf16-") as tmp:
        model = build_model(Path(tmp) / "tiny-tied-qwen2-bf16")
        print(f"MODEL_ID = {model} (tied, bf16, hub layout); copies in {OUT_DIR}", flush=True)
        failed = check(paths, model, args.timeout, args.keep_going)
    print(f"{failed} of {len(paths)} notebooks failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
