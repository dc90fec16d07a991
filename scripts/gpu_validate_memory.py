"""Validate labkit.memory.peak's predicted peak of a training step on one GPU, and size what a GPU
adds beyond it.

    python scripts/gpu_validate_memory.py            # 8 configurations, < 5 min on one H100
    python scripts/gpu_validate_memory.py --dry      # tiny configs on CPU: proves the script runs

Each configuration builds a model from a catalog config with fewer layers (random weights, no
download), runs two real steps as ``out = model(input_ids=ids, labels=ids); out.loss.backward();
del out; optimizer.step(); optimizer.zero_grad(set_to_none=True)`` (AdamW as torch picks it:
foreach on CUDA) and compares the predicted peak with ``torch.cuda.max_memory_allocated`` (what
the peak predicts: live tensors) and ``max_memory_reserved`` (what the caching allocator took
from the card). Then one line per thing a GPU adds (:data:`labkit.memory.peak.GPU_OVERHEADS`,
each with its source), measured here: the CUDA context, the allocator's reserve with and without
``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` (in a child process: the setting must come
before CUDA starts), the cuBLAS workspace. Prints markdown; commit it to
``benchmarks/gpu_memory_validation.md``. No GPU figure has been measured for the course yet.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from labkit import LabkitError, hardware
from labkit.cli import Parser
from labkit.memory import peak
from labkit.models import targets, zoo
from labkit.tuners import quantized_merge

#: (label, catalog config, layers kept, job options) — full fine-tuning, LoRA, QLoRA,
#: checkpointing, fp32 and bf16 autocast, two sequence lengths, a 152k vocabulary.
CASES = [
    ("llama-3.1-8b/4L full", "llama-3.1-8b", 4, dict(method="full", seq=512)),
    ("llama-3.1-8b/4L full ckpt", "llama-3.1-8b", 4, dict(method="full", seq=2048, ckpt=True)),
    ("llama-3.1-8b/8L LoRA bf16 base", "llama-3.1-8b", 8, dict(method="lora", seq=2048)),
    ("llama-3.1-8b/8L QLoRA ckpt", "llama-3.1-8b", 8, dict(method="qlora", seq=2048, ckpt=True)),
    ("qwen2.5-0.5b/8L full (V 152k)", "qwen2.5-0.5b", 8, dict(method="full", seq=1024)),
    ("qwen2.5-0.5b/8L LoRA", "qwen2.5-0.5b", 8, dict(method="lora", seq=2048, batch=2)),
    ("gpt2 full fp32", "gpt2", 12, dict(method="full", seq=1024, precision="fp32")),
    ("gpt2 full fp32 ckpt", "gpt2", 12, dict(method="full", seq=1024, precision="fp32", ckpt=True)),
]
DRY = [
    ("tiny-llama full fp32", "tiny-llama", 2, dict(method="full", seq=32, precision="fp32")),
    ("tiny-llama LoRA", "tiny-llama", 2, dict(method="lora", seq=32)),
    ("tiny-gpt2 full ckpt", "tiny-gpt2", 2, dict(method="full", seq=32, ckpt=True)),
]


def build(catalog: str, layers: int, job: dict, device: str):
    """The model of ``job`` on ``device`` (bf16 weights for LoRA's base, NF4 for QLoRA)."""
    from transformers import AutoModelForCausalLM

    config = zoo.load_config(catalog)
    for key in ("num_hidden_layers", "n_layer"):
        if hasattr(config, key):
            setattr(config, key, layers)
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    method = job["method"]
    torch.manual_seed(0)
    if method == "qlora":
        folder = tempfile.mkdtemp()
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
        q = quantized_merge.bnb_4bit_config("nf4", torch.bfloat16, double_quant=True)
        model = AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=q, device_map={"": device}, dtype=torch.bfloat16
        )
    else:
        dtype = torch.bfloat16 if method == "lora" else torch.float32
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)
        model = model.to(device)
    if method in {"lora", "qlora"}:
        from peft import LoraConfig, get_peft_model

        mods = [m.name for m in targets.lora_modules(config, "default")]
        gpt2 = config.model_type == "gpt2"  # Conv1D stores (in, out)
        model = get_peft_model(model, LoraConfig(r=8, target_modules=mods, fan_in_fan_out=gpt2))
    if job.get("ckpt"):
        from labkit.memory import measure

        measure.enable_checkpointing(model, reentrant=False)  # transformers' default
    return model.train(), config


def predicted(config, job: dict, device: str) -> peak.Peak:
    precision = job.get("precision", "bf16-mixed")
    return peak.training_peak(
        config,
        method=job["method"],
        precision=precision,
        batch=job.get("batch", 1),
        seq=job["seq"],
        checkpointing=job.get("ckpt", False),
        base_dtype="bf16" if job["method"] == "lora" else None,
        lora_r=8,
        device="cuda" if device == "cuda" else "cpu",
    )


def measured(model, config, job: dict, device: str) -> tuple[int, int]:
    """(max allocated, max reserved) over two real steps; on CPU the live-tensor trace."""
    ids = torch.randint(3, config.vocab_size, (job.get("batch", 1), job["seq"]), device=device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    mixed = job.get("precision", "bf16-mixed") != "fp32"
    if device != "cuda":
        from labkit.memory import trace

        steps = trace.trace_training(
            model, opt, ids, steps=2, autocast_dtype=torch.bfloat16 if mixed else None
        )
        top = max(s.peak for s in steps)
        return top, top
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mixed):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        del out
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()


def gpu_additions() -> dict[str, int]:
    """Measured in this process (run first, before any model): the CUDA context (device memory
    used once CUDA starts, beyond the allocator's reserve) and the cuBLAS workspace (allocated
    by the first matmul beyond its output)."""
    free0, total = torch.cuda.mem_get_info()  # starts CUDA
    context = total - free0 - torch.cuda.memory_reserved()
    a = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
    before = torch.cuda.memory_allocated()
    c = a @ a
    torch.cuda.synchronize()
    workspace = torch.cuda.memory_allocated() - before - c.untyped_storage().nbytes()
    del a, c
    return {"context": context, "cublas_workspace": workspace}


def reserve_child(expandable: bool) -> dict[str, int]:
    """The allocator's reserve after the first configuration's two steps, in a child process
    (``PYTORCH_CUDA_ALLOC_CONF`` must be set before CUDA starts)."""
    env = dict(os.environ)
    if expandable:
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    else:
        env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    cmd = [sys.executable, __file__, "--reserve-child"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
    if done.returncode:
        raise LabkitError(f"the reserve child failed: {done.stderr.strip()[-200:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _reserve_child_main() -> int:
    label, catalog, layers, job = CASES[0]
    model, config = build(catalog, layers, job, "cuda")
    allocated, reserved = measured(model, config, job, "cuda")
    print(json.dumps({"allocated": allocated, "reserved": reserved}))
    return 0


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def main(argv: list[str]) -> int:
    parser = Parser(
        prog="python scripts/gpu_validate_memory.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--dry", action="store_true", help="tiny configs on CPU (no GPU needed)")
    parser.add_argument("--reserve-child", action="store_true", help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.reserve_child:
        return _reserve_child_main()
    hardware.setup()
    cuda = torch.cuda.is_available() and not args.dry
    if not cuda and not args.dry:
        print("no CUDA GPU: run with --dry to check the script on CPU", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    name = torch.cuda.get_device_name(0) if cuda else "CPU (dry run: the trace, not a GPU)"
    print(f"device: {name}; torch {torch.__version__}; AdamW as torch picks it; two steps\n")
    extra = gpu_additions() if cuda else {}
    print(
        "| configuration | phase | predicted MiB | max allocated MiB | error % | "
        "max reserved MiB | reserved - allocated MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    for label, catalog, layers, job in DRY if args.dry else CASES:
        try:
            model, config = build(catalog, layers, job, device)
            got = predicted(config, job, device)
            allocated, reserved = measured(model, config, job, device)
        except Exception as err:  # report and go on: one failing case must not hide the rest
            print(
                f"| {label} | - | - | - | failed: {type(err).__name__}: {str(err)[:80]} | - | - |"
            )
            continue
        finally:
            model = None
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        err_pct = 100 * (got.peak - allocated) / allocated
        print(
            f"| {label} | {got.phase} | {mib(got.peak)} | {mib(allocated)} | {err_pct:+.2f} | "
            f"{mib(reserved)} | {mib(reserved - allocated)} |"
        )
        sys.stdout.flush()
    print(f"\n{time.perf_counter() - start:.0f} s\n")
    print("What a GPU adds beyond the peak (measured here; sources in labkit.memory.peak):\n")
    for item in peak.gpu_overheads():
        print(f"- {item['name']}: {item['what']} [{item['source']}]")
    if cuda:
        plain, expandable = reserve_child(False), reserve_child(True)
        print(f"\n- measured CUDA context: {mib(extra['context'])} MiB")
        print(
            f"- measured cuBLAS workspace (first bf16 matmul): {mib(extra['cublas_workspace'])} MiB"
        )
        for tag, r in (("default", plain), ("expandable_segments:True", expandable)):
            print(
                f"- allocator reserve, {CASES[0][0]}, {tag}: reserved {mib(r['reserved'])} MiB, "
                f"allocated {mib(r['allocated'])} MiB, reserve {mib(r['reserved'] - r['allocated'])} MiB"
            )
    else:
        print("\nno GPU here: no GPU figure has been measured (the table is the CPU trace)")
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except LabkitError as err:  # bad arguments: one line, exit 2
        print(f"gpu_validate_memory: {err}", file=sys.stderr)
        raise SystemExit(2) from None
