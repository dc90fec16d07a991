"""Memory of any causal LM transformers can build, by a dry run: one training step (or one prefill)
run on fake tensors, which have shapes, dtypes and storages but no data, so no memory is used and
no arithmetic is done.

- :func:`training_activations`: what autograd keeps for backward in one training step (full
  fine-tuning, frozen first layers, LoRA; eager or SDPA; checkpointing on or off; pure 16-bit or
  autocast), measured by :func:`labkit.memory.measure.saved_tensor_bytes` itself (the same pack hook, the
  same rules for storage sharing and views, the same reentrant checkpointing) on a model built
  under ``FakeTensorMode``;
- :func:`prefill_peak`: the largest set of live tensors during a prefill (no grad), besides the
  weights: activations, attention masks, the KV cache and the logits, followed op by op;
- :func:`live_peak`: the same live-tensor tracker for a real model (the CPU measurement the
  estimate is checked against), and :func:`cache_bytes`, the KV cache a real or fake prefill left.

Why ``FakeTensorMode`` and not the meta device (checked with torch 2.13): a fake tensor keeps its
storage identity (views share one StorageImpl, which :func:`labkit.memory.measure.storage_key` reads; a
fake storage's ``data_ptr()`` is 0 for all), and it reports the device it fakes (``cpu``), so every
op dispatches as on a real CPU: SDPA picks the CPU flash kernel (output + logsumexp saved) or the
math path exactly as a real step does. On the meta device the kernels chosen differ. Faking a CUDA
device needs a CUDA build of torch (this CPU build aborts), so the dry run reproduces a *CPU* step;
on CUDA the differences are dropout masks (1 byte, not the activation dtype), LayerNorm statistics
(fp32) and the SDPA kernel's extras. The five formula families keep their derivation
(:mod:`labkit.memory.activations`, exact for both devices); a test shows formula == dry run on them.

QLoRA's NF4 base cannot be faked (bitsandbytes quantizes real data): its dry run uses a 16-bit
base of the compute dtype, as :func:`labkit.memory.estimator.training_memory`'s formula path does.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from labkit import LabkitError
from labkit.checks import choice, positive
from labkit.memory import measure
from labkit.memory.activations import ADAPTER_DTYPES, ATTENTIONS, Activations
from labkit.models import architecture
from labkit.models.targets import lora_modules, trainable_shapes

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: What :func:`training_activations` accepts as ``method``.
METHODS = ("full", "frozen", "lora", "qlora")


@dataclass
class DryRun:
    """A dry run's figures in bytes. ``saved``: :class:`labkit.memory.measure.Saved` of the fake step;
    ``param_copies``: autocast's 16-bit copies of trainable weights (counted with the weights)."""

    activations: Activations
    param_copies: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def _dtype(name: str, what: str = "activation dtype") -> torch.dtype:
    choice(what, name, tuple(TORCH_DTYPES))
    return TORCH_DTYPES[name]


def fake_model(config: Any, *, attention: str = "sdpa", dtype: str = "fp32", prepare=None):
    """The causal LM ``config`` describes on fake CPU tensors, in ``dtype``, with ``attention``,
    in train mode; returns ``(model, mode)`` (run it inside ``with mode:``).

    The model is built on the meta device (and ``prepare(model)`` applied there: freezing, peft
    adapters), then every parameter, buffer and tensor attribute is replaced by a fake CPU tensor
    of the same shape and dtype, tied parameters by one. (Built under ``FakeTensorMode``
    directly, ``module.to()`` fails: fake tensors carry weakrefs, which ``swap_tensors`` refuses.)
    """
    choice("attention", attention, ATTENTIONS)
    td = _dtype(dtype, "weight dtype")
    with torch.device("meta"):
        model = architecture.build_causal_lm(config, attn_implementation=attention, dtype=td)
        if prepare is not None:
            model = prepare(model)
    return to_fake(model)


def to_fake(model: torch.nn.Module):
    """Any model built on the meta device, with every parameter, buffer and tensor attribute
    replaced by a fake CPU tensor (tied ones by one), in train mode; returns ``(model, mode)``."""
    mode = FakeTensorMode()
    made: dict[int, torch.Tensor] = {}

    def fake(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in made:
            with mode:
                new = torch.empty(t.shape, dtype=t.dtype, device="cpu")
            if isinstance(t, torch.nn.Parameter):
                new = torch.nn.Parameter(new, requires_grad=t.requires_grad)
            made[id(t)] = new
        return made[id(t)]

    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[name] = fake(p)
        for name, buf in list(mod._buffers.items()):
            if buf is not None:
                mod._buffers[name] = fake(buf)
        for name, value in list(vars(mod).items()):
            if isinstance(value, torch.Tensor) and value.device.type == "meta":
                setattr(mod, name, fake(value))
    return model.train(), mode


def _apply_method(model, config, method: str, *, r: int, targets: Any, adapter_dtype: str, k: int):
    """Freeze / add LoRA adapters as :func:`labkit.models.targets.trainable_shapes` counts them."""
    if method == "frozen":
        keep = set(trainable_shapes(config, "frozen", frozen_layers=k))
        for name, p in model.named_parameters():
            p.requires_grad_(name in keep)
        return model
    if method not in {"lora", "qlora"}:
        return model
    from peft import LoraConfig, get_peft_model

    mods = lora_modules(config, targets)
    lora = LoraConfig(
        r=r,
        target_modules=[m.name for m in mods],
        lora_dropout=0.0,
        fan_in_fan_out=any(m.kind == "conv1d" for m in mods),
    )
    model = get_peft_model(model, lora, autocast_adapter_dtype=False)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.data.to(TORCH_DTYPES[adapter_dtype])
    return model


@contextlib.contextmanager
def _fp32_grouped_mm():
    """torch's fake (meta) kernel of ``_grouped_mm`` (MoE experts in transformers 5) accepts bf16
    only, as the CUDA kernel does; the CPU kernel also runs fp32 and fp16. Same output shape."""
    from torch import _meta_registrations as meta

    original = meta._meta_grouped_mm_common

    def common(mat_a, mat_b, scale_a, scale_b, offs, bias, scale_result, out_dtype, **kw):
        if scale_a is None and mat_a.dtype == mat_b.dtype != torch.bfloat16:
            return meta._create_grouped_mm_output_tensor(mat_a, mat_b, offs, out_dtype)
        return original(mat_a, mat_b, scale_a, scale_b, offs, bias, scale_result, out_dtype, **kw)

    meta._meta_grouped_mm_common = common
    try:
        yield
    finally:
        meta._meta_grouped_mm_common = original


@contextlib.contextmanager
def _unpacked_positions():
    """transformers looks for packed sequences in the position ids (a jump in them) when there is
    no cache; on fake tensors it cannot read them and assumes packing, building a b·s² mask a real
    step does not have. The dry run's positions are 0..s-1, so the answer is "not packed"."""
    from transformers import masking_utils

    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        with _fp32_grouped_mm():
            yield
    finally:
        masking_utils.find_packed_sequence_indices = original


def training_activations(
    config: Any,
    batch: int,
    seq: int,
    dtype: str = "bf16",
    attention: str = "sdpa",
    *,
    checkpointing: bool = False,
    dropout: bool = True,
    autocast: bool = False,
    method: str = "full",
    lora_r: int = 8,
    lora_targets: Any = "default",
    adapter_dtype: str = "fp32",
    base_dtype: str | None = None,
    frozen_layers: int = 0,
) -> DryRun:
    """What autograd keeps for backward in one training step, by a dry run on fake tensors.

    ``dtype``: the activation dtype; the weights are in ``dtype`` (pure 16-bit or fp32), or fp32
    under ``autocast`` (mixed precision, autocast to ``dtype``). ``method``: ``full``, ``frozen``
    (embeddings and the first ``frozen_layers`` blocks frozen), ``lora``/``qlora`` (frozen base in
    ``base_dtype``, default: the weight dtype; QLoRA's NF4 base is dry-run as 16-bit; adapters in
    ``adapter_dtype``, ``lora_dropout=0``). ``dropout``: train mode with the config's dropout, else
    eval mode. The result's ``activations`` / ``logits`` / ``recompute`` mean what
    :func:`labkit.memory.activations.activation_bytes` means (the measured ``Saved``'s).
    """
    b, q = positive("batch", batch), positive("sequence length", seq)
    choice("method", method, METHODS)
    choice("adapter dtype", adapter_dtype, ADAPTER_DTYPES)
    act = _dtype(dtype)
    positive("LoRA rank r", lora_r)
    weights = "fp32" if autocast or dtype == "fp32" else dtype
    if method == "qlora":
        weights = dtype if dtype != "fp32" else "bf16"
    if method == "lora" and base_dtype is not None:
        weights = base_dtype
    start = time.perf_counter()

    def prepare(model):
        return _apply_method(
            model,
            config,
            method,
            r=lora_r,
            targets=lora_targets,
            adapter_dtype=adapter_dtype,
            k=frozen_layers,
        )

    model, mode = fake_model(config, attention=attention, dtype=weights, prepare=prepare)
    with mode:
        if not dropout:
            model.eval()
        vocab = model.get_input_embeddings().num_embeddings
        ids = torch.randint(0, vocab, (b, q))
        cast = torch.autocast("cpu", dtype=act) if autocast else contextlib.nullcontext()
        with cast, _unpacked_positions():
            # without checkpointing all is saved by the end of the forward and the loss: the
            # backward (as slow as the forward on fake tensors) runs only to recompute blocks
            saved = measure.saved_tensor_bytes(
                model, ids, checkpointing=checkpointing, backward=checkpointing
            )
    seconds = time.perf_counter() - start
    items = {"forward": saved.forward - saved.logits, "recompute_one_layer": saved.recompute}
    acts = Activations(saved.activations, saved.logits, 0, saved.recompute, items)
    return DryRun(acts, saved.param_copies, seconds, {"method": method, "weights": weights})


# ----------------------------------------------------------------------------- live tensors
class _LiveTensors(TorchDispatchMode):
    """Follows every storage an op creates (not the ones that existed before: the weights) until
    the last tensor on it is freed; ``peak`` is the largest sum of live storages' bytes seen after
    an op. Works for real and for fake tensors (storages keyed by :func:`measure.storage_key`)."""

    def __init__(self) -> None:
        super().__init__()
        self.before: set[int] = set()
        self.live: dict[int, int] = {}
        self.refs: dict[int, int] = {}
        self.now = self.peak = 0

    def _drop(self, key: int) -> None:
        self.refs[key] -= 1
        if not self.refs[key]:
            del self.refs[key]
            self.now -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = out if isinstance(out, tuple | list) else (out,)
        for t in flat:
            if not isinstance(t, torch.Tensor):
                continue
            key = measure.storage_key(t)
            if key in self.before:
                continue
            if key not in self.live:
                self.live[key] = t.untyped_storage().nbytes()
                self.now += self.live[key]
            self.refs[key] = self.refs.get(key, 0) + 1
            weakref.finalize(t, self._drop, key)
        self.peak = max(self.peak, self.now)
        return out


def _prefill(model, ids: torch.Tensor) -> tuple[int, int, int]:
    """(peak live bytes beyond what existed before, KV-cache bytes after, logits bytes)."""
    tracker = _LiveTensors()
    tracker.before = {measure.storage_key(t) for t in model.parameters()}
    tracker.before |= {measure.storage_key(t) for t in model.buffers()}
    with torch.no_grad(), _unpacked_positions(), tracker:
        out = model(input_ids=ids, use_cache=True)
        kv = cache_bytes(out.get("cache", out.get("past_key_values")))
        logits = out.logits.untyped_storage().nbytes()
        del out
    return tracker.peak, kv, logits


def cache_bytes(cache: Any) -> int:
    """Bytes of the key/value tensors a transformers cache holds (unique storages)."""
    seen: dict[int, int] = {}
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                seen[measure.storage_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


def live_peak(model, input_ids: torch.Tensor) -> dict[str, int]:
    """A real prefill of ``model`` on ``input_ids`` (no grad, the cache on), measured: ``peak``, the
    largest set of live tensors it created (weights excluded), ``kv_cache`` and ``logits``."""
    peak, kv, logits = _prefill(model.eval(), input_ids)
    return {"peak": peak, "kv_cache": kv, "logits": logits}


def prefill_peak(
    config: Any, batch: int, context: int, dtype: str = "bf16", attention: str = "sdpa"
) -> dict[str, int]:
    """The prefill of ``context`` tokens by a dry run: ``peak`` (the largest set of live tensors
    beyond the weights: activations, masks, the KV cache filled so far, the logits),
    ``kv_cache`` (what the cache holds at the end: sliding-window layers keep their window only)
    and ``logits`` (transformers computes all b·s·V of them in a prefill), in bytes."""
    b, q = positive("batch", batch), positive("context length", context)
    model, mode = fake_model(config, attention=attention, dtype=dtype)
    with mode:
        ids = torch.randint(0, model.get_input_embeddings().num_embeddings, (b, q))
        peak, kv, logits = _prefill(model.eval(), ids)
    if peak <= 0:
        raise LabkitError("the dry run saw no tensors; accepted: a causal LM config")
    return {"peak": peak, "kv_cache": kv, "logits": logits}
