"""Validate labkit.memory.estimator's totals against torch.cuda.max_memory_allocated on one GPU.

    python scripts/gpu_validate_memory.py            # the full matrix, < 5 min on one H100
    python scripts/gpu_validate_memory.py --dry      # tiny configs on CPU: proves the script runs

Matrix: 3 model shapes built from catalog configs with fewer layers (random weights, no download):
a Llama-3.1-8B-shaped model (GQA), a Qwen2.5-0.5B-shaped model (V = 151,936) and a GPT-2;
methods full / LoRA / QLoRA; checkpointing off / on; two sequence lengths. Each case runs two
real steps (bf16 autocast, AdamW) and compares the second step's peak with the estimate.
Prints a markdown table with the device name; commit it to benchmarks/gpu_memory_validation.md.
"""

from __future__ import annotations

import gc
import itertools
import sys
import time

import torch

from labkit import LabkitError, hardware
from labkit.cli import Parser
from labkit.memory import estimator, measure
from labkit.models import zoo
from labkit.models.targets import PEFT_DEFAULT_TARGETS

SHAPES = {  # name -> (catalog config, layers kept)
    "llama-3.1-8b/4L": ("llama-3.1-8b", 4),
    "qwen2.5-0.5b/8L (V 152k)": ("qwen2.5-0.5b", 8),
    "gpt2": ("gpt2", 12),
}
DRY = {
    "tiny-llama": ("tiny-llama", 2),
    "tiny-qwen2": ("tiny-qwen2", 2),
    "tiny-gpt2": ("tiny-gpt2", 2),
}


def build(catalog: str, layers: int, method: str, device: str, ckpt: bool):
    config = zoo.load_config(catalog)
    for key in ("num_hidden_layers", "n_layer"):
        if hasattr(config, key):
            setattr(config, key, layers)
    if hasattr(config, "layer_types") and config.layer_types:
        config.layer_types = config.layer_types[:layers]
    config.use_cache = False
    from transformers import AutoModelForCausalLM

    if method == "qlora":
        import tempfile

        from transformers import BitsAndBytesConfig

        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        folder = tempfile.mkdtemp()
        base.save_pretrained(folder)
        del base
        q = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=q, device_map={"": device}, dtype=torch.bfloat16
        )
    else:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device)
    if method in {"lora", "qlora"}:
        from peft import LoraConfig, get_peft_model

        targets = list(PEFT_DEFAULT_TARGETS[config.model_type])  # peft's own default
        if method == "lora":
            for p in model.parameters():
                p.requires_grad_(False)
        gpt2 = config.model_type == "gpt2"  # Conv1D stores (in, out)
        lora = LoraConfig(r=8, target_modules=targets, fan_in_fan_out=gpt2)
        model = get_peft_model(model, lora)
    if ckpt:  # the CPU measurement sees saved tensors only with the reentrant variant
        measure.enable_checkpointing(model, reentrant=device != "cpu")
        if method != "full":
            model.enable_input_require_grads()
    return model, config


def run_case(shape, method, ckpt, seq, device, batch=1):
    catalog, layers = shape
    model, config = build(catalog, layers, method, device, ckpt)
    precision = "bf16-mixed"
    est = estimator.training_memory(
        config,
        method=method,
        precision=precision,
        batch=batch,
        seq=seq,
        checkpointing=ckpt,
        attention="sdpa",
        lora_targets="default",  # the same targets as build()
        device="cuda" if device == "cuda" else "cpu",
    )
    opt = measure.make_optimizer(model, "adamw")
    ids = torch.randint(3, config.vocab_size, (batch, seq), device=device)
    estimate = est.total
    if device == "cuda":
        for _ in range(2):
            peak = measure.cuda_peak(model, opt, ids, autocast_dtype=torch.bfloat16)["peak"]
    else:  # dry run: states + saved tensors of a bf16-autocast step on CPU stand in for the peak
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            saved = measure.saved_tensor_bytes(model, ids)
        opt.step()
        states = measure.state_bytes(model, opt)
        peak = states.weights + states.gradients + states.optimizer + saved.total
        peak += saved.param_copies
        estimate -= est.transient  # transient buffers exist only on the GPU path
    del model, opt
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return estimate, peak


def main(argv: list[str]) -> int:
    parser = Parser(
        prog="python scripts/gpu_validate_memory.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--dry", action="store_true", help="tiny configs on CPU (no GPU needed)")
    args = parser.parse_args(argv)
    hardware.setup()
    device = "cuda" if torch.cuda.is_available() and not args.dry else "cpu"
    if device == "cpu" and not args.dry:
        print("no CUDA GPU: run with --dry to check the script on CPU", file=sys.stderr)
        return 2
    shapes = DRY if args.dry else SHAPES
    methods = ("full", "lora") if args.dry else ("full", "lora", "qlora")
    seqs = (16, 32) if args.dry else (512, 2048)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (dry run, not a validation)"
    print(f"device: {name}; torch {torch.__version__}; bf16 autocast, AdamW, SDPA, batch 1\n")
    print("| model | method | ckpt | seq | estimate MiB | measured MiB | error % |")
    print("|---|---|---|---|---|---|---|")
    errors = []
    start = time.perf_counter()
    for (label, shape), method, ckpt, seq in itertools.product(
        shapes.items(), methods, (False, True), seqs
    ):
        try:
            est, peak = run_case(shape, method, ckpt, seq, device)
        except Exception as err:  # report and go on: one failing case must not hide the rest
            print(
                f"| {label} | {method} | {ckpt} | {seq} | - | - | failed: {type(err).__name__}: {str(err)[:80]} |"
            )
            continue
        err_pct = 100 * (est - peak) / peak
        errors.append(abs(err_pct))
        print(
            f"| {label} | {method} | {ckpt} | {seq} | {est / 2**20:.1f} | {peak / 2**20:.1f} | {err_pct:+.1f} |"
        )
        sys.stdout.flush()
    if errors:
        print(
            f"\nmax |error| {max(errors):.1f}% over {len(errors)} cases in {time.perf_counter() - start:.0f} s"
        )
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except LabkitError as err:  # bad arguments: one line, exit 2
        print(f"gpu_validate_memory: {err}", file=sys.stderr)
        raise SystemExit(2) from None
