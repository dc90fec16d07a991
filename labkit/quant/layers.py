"""Quantized layers and model surgery (notebooks 05-07), built on :mod:`labkit.quant.integer`
and :mod:`labkit.quant.codebook`.

:class:`W8A16Linear` and :class:`NF4Linear` (one :class:`WeightOnlyLinear` base: they differ only
in how they dequantize), :class:`W8A8Linear` (with SmoothQuant: :func:`smoothquant_scales`,
:func:`collect_input_absmax`; folded into the norms where a deployed model can:
:func:`norm_fed_linears`, :func:`fold_smoothquant`), :func:`quantize_model` to swap every
``nn.Linear``, and :func:`logit_difference` to compare the quantized model with the original.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

import labkit
from labkit import LabkitError
from labkit.quant.codebook import nf4_dequantize, nf4_quantize
from labkit.quant.integer import absmax_dequantize, absmax_quantize, check_tensor, int8_matmul

# --------------------------------------------------------------------------------------------
# layers and model surgery
# --------------------------------------------------------------------------------------------


class WeightOnlyLinear(nn.Module):
    """A linear layer that stores its weight quantized and dequantizes it inside ``forward``,
    just before the matmul, which runs in the input's floating-point dtype. Subclasses differ
    only in how they store the weight and how :meth:`dequantized_weight` recovers it."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = (
            None
            if linear.bias is None
            else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        )

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(
            x,
            self.dequantized_weight(x.dtype),
            None if self.bias is None else self.bias.to(x.dtype),
        )


class W8A16Linear(WeightOnlyLinear):
    """Weight-only int8: int8 weights with per-output-channel (or per-group) absmax scales."""

    def __init__(self, linear: nn.Linear, group_size: int | None = None):
        super().__init__(linear)
        q, scale = absmax_quantize(linear.weight.detach(), 8, axis=-1, group_size=group_size)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return absmax_dequantize(self.qweight, self.scale).to(dtype)


class NF4Linear(WeightOnlyLinear):
    """Weight-only NF4 (blockwise absmax, 64): packed 4-bit codes and one absmax per block."""

    def __init__(self, linear: nn.Linear, blocksize: int = 64):
        super().__init__(linear)
        self.blocksize = blocksize
        packed, absmax = nf4_quantize(linear.weight.detach().float(), blocksize)
        self.register_buffer("packed", packed)
        self.register_buffer("absmax", absmax)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        shape = (self.out_features, self.in_features)
        return nf4_dequantize(self.packed, self.absmax, shape, self.blocksize).to(dtype)


def smoothquant_scales(
    act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5
) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors ``s_j = max|X_j|^α / max|W_j|^(1-α)``.

    Dividing activations by ``s`` and multiplying weight input-columns by ``s`` leaves
    ``X @ W.T`` unchanged but moves the quantization difficulty from outlier activation channels
    into the weights (α = 0: none moved; α = 1: all).
    """
    check_tensor(act_absmax, "act_absmax")
    if not 0.0 <= alpha <= 1.0:
        raise LabkitError(f"alpha must be in [0, 1], got {alpha}")
    if act_absmax.shape != (weight.shape[-1],):
        raise LabkitError(
            f"act_absmax has shape {tuple(act_absmax.shape)}, expected ({weight.shape[-1]},)"
        )
    w_absmax = weight.detach().float().abs().amax(dim=0)
    s = act_absmax.float().clamp(min=1e-5) ** alpha / w_absmax.clamp(min=1e-5) ** (1 - alpha)
    return s.clamp(min=1e-5)


class W8A8Linear(nn.Module):
    """W8A8: int8 weights (per output channel) and int8 activations quantized per token on the
    fly, int32 accumulation, one rescale after the matmul (:func:`int8_linear_vectorwise`).

    With ``smooth`` (from :func:`smoothquant_scales`) the weight columns are multiplied by it and
    the input divided by it first, an explicit multiply so any ``nn.Linear`` works. A deployed
    model folds ``1/s`` into the preceding LayerNorm/RMSNorm for free, which only exists for the
    linears :func:`norm_fed_linears` finds (:func:`fold_smoothquant`).
    """

    def __init__(self, linear: nn.Linear, smooth: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        if smooth is not None:
            w = w * smooth.float().unsqueeze(0)
            self.register_buffer("inv_smooth", 1.0 / smooth.float())
        else:
            self.inv_smooth = None
        q, scale = absmax_quantize(w, 8, axis=-1)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.bias = (
            None
            if linear.bias is None
            else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if self.inv_smooth is None else x.float() * self.inv_smooth
        x2 = xf.reshape(-1, self.in_features)
        qx, sx = absmax_quantize(x2, 8, axis=-1)  # per token, computed at run time
        acc = int8_matmul(qx, self.qweight)
        y = acc.float() / (sx * self.scale.T)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def linear_names(model: nn.Module, skip: Iterable[str] = ("lm_head",)) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` whose last name part is not in ``skip``."""
    if not isinstance(model, nn.Module):
        example = f"zoo.load_model({model!r})" if isinstance(model, str) else "zoo.load_model(name)"
        raise LabkitError(
            f"model must be a loaded torch.nn.Module, got {type(model).__name__} {model!r:.60}; "
            f"accepted: a model, e.g. {example} (labkit.models.zoo)"
        )
    skip = set(skip)
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.split(".")[-1] not in skip
    ]


@torch.no_grad()
def collect_input_absmax(
    model: nn.Module,
    batches: Iterable[dict],
    names: Iterable[str] | None = None,
    mask_padding: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-input-channel ``max |x|`` seen by each ``nn.Linear`` over calibration ``batches``
    (dicts passed as ``model(**batch)``): the statistic SmoothQuant needs.

    By default every position counts, padding included. ``mask_padding=True`` takes the maxima
    over the real tokens only (``batch["attention_mask"] == 1``), for inputs shaped like the mask
    plus channels; an input of another shape (a pooler reading one token per sequence) counts whole.
    """
    names = list(linear_names(model) if names is None else names)
    stats: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    keep: list[torch.Tensor | None] = [None]  # the current batch's real-token mask

    def hook(name):
        def fn(_module, inputs, _output):
            x = inputs[0].detach().float()
            if keep[0] is not None and x.shape[:-1] == keep[0].shape:
                x = x[keep[0]]
            a = x.reshape(-1, x.shape[-1]).abs().amax(0)
            stats[name] = a if name not in stats else torch.maximum(stats[name], a)

        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        for batch in batches:
            if mask_padding:
                if "attention_mask" not in batch:
                    raise LabkitError(
                        f"mask_padding=True needs an 'attention_mask' in every batch, got keys "
                        f"{sorted(batch)}; accepted: tokenizer(...) output, or mask_padding=False"
                    )
                keep[0] = batch["attention_mask"].bool()
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return stats


NORM_CLASSES = ("LayerNorm", "RMSNorm")


def _first_output(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


@torch.no_grad()
def norm_fed_linears(
    model: nn.Module, batch: dict, skip: Iterable[str] = ("lm_head",)
) -> dict[str, str]:
    """``{linear name: norm name}`` for every ``nn.Linear`` (names ending in ``skip`` left out)
    whose input IS a LayerNorm's or RMSNorm's output, seen on one forward pass of ``batch`` in
    eval mode (dropout passes the tensor through). A linear after an activation (BERT's FFN
    ``output.dense`` after GELU) or after attention (``o_proj``) is not one of them."""
    candidates = set(linear_names(model, skip))
    norms = {
        n: m
        for n, m in model.named_modules()
        if type(m).__name__.endswith(NORM_CLASSES) and getattr(m, "weight", None) is not None
    }
    produced: dict[tuple[int, tuple[int, ...]], tuple[str, torch.Tensor]] = {}
    feeds: dict[str, str] = {}

    def norm_hook(name):
        def fn(_module, _inputs, out):  # the tensor is kept alive: its memory is not reused
            produced[(out.data_ptr(), tuple(out.shape))] = (name, out)

        return fn

    def linear_hook(name):
        def fn(_module, inputs):
            hit = produced.get((inputs[0].data_ptr(), tuple(inputs[0].shape)))
            if hit is not None:
                feeds[name] = hit[0]

        return fn

    handles = [m.register_forward_hook(norm_hook(n)) for n, m in norms.items()]
    handles += [
        model.get_submodule(n).register_forward_pre_hook(linear_hook(n)) for n in candidates
    ]
    was_training = model.training
    model.eval()
    try:
        model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return feeds


def _scale_group(model: nn.Module, norm_name: str, linears: list[str], s: torch.Tensor) -> None:
    """Divide the norm's weight (and bias) by ``s``, multiply the linears' columns by it."""
    norm = model.get_submodule(norm_name)
    norm.weight.div_(s.to(norm.weight.dtype))
    if getattr(norm, "bias", None) is not None:
        norm.bias.div_(s.to(norm.bias.dtype))
    for n in linears:
        w = model.get_submodule(n).weight
        w.mul_(s.to(w.dtype))


def _groups(feeds: dict[str, str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for linear, norm in feeds.items():
        groups.setdefault(norm, []).append(linear)
    return groups


@torch.no_grad()
def smoothquant_foldable(
    model: nn.Module, batch: dict, skip: Iterable[str] = ("lm_head",), rtol: float = 1e-4
) -> dict[str, str]:
    """The linears whose SmoothQuant ``1/s`` folds into their norm for free, ``{linear: norm}``: those
    of :func:`norm_fed_linears` whose norm's output reaches nothing else (other folds, such as into a
    preceding linear, are not tested). Tested, one norm at a time:
    scale the norm by random factors in [0.5, 2] and those linears' columns by their inverse;
    the model's output on ``batch`` must not move (beyond ``rtol`` of its largest value). It
    does move in a post-LN model (BERT), where each LayerNorm's output also feeds the residual."""
    feeds = norm_fed_linears(model, batch, skip)
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(0)
    kept: dict[str, str] = {}
    try:
        ref = _first_output(model(**batch)).float()
        for norm_name, linears in _groups(feeds).items():
            modules = [model.get_submodule(n) for n in [norm_name, *linears]]
            params = [p for m in modules for p in m.parameters(recurse=False)]
            saved = [p.detach().clone() for p in params]
            width = model.get_submodule(linears[0]).in_features
            _scale_group(model, norm_name, linears, 0.5 + 1.5 * torch.rand(width, generator=gen))
            out = _first_output(model(**batch)).float()
            for p, old in zip(params, saved, strict=True):
                p.copy_(old)
            if (out - ref).abs().max() <= rtol * ref.abs().max():
                kept.update(dict.fromkeys(linears, norm_name))
    finally:
        model.train(was_training)
    return kept


@torch.no_grad()
def fold_smoothquant(
    model: nn.Module,
    act_absmax: dict[str, torch.Tensor],
    feeds: dict[str, str],
    alpha: float = 0.5,
) -> list[str]:
    """SmoothQuant as deployed, in place: for each norm and the linears that read it (``feeds``
    from :func:`smoothquant_foldable`), one ``s`` from the shared input's ``max|X_j|`` and the
    largest ``max|W_j|`` over those linears; the norm's weight and bias are divided by ``s``, the
    linears' weight columns multiplied by it. The float model computes the same function (up to
    rounding); quantize it afterwards (``quantize_model(m, "w8a8")``). Returns the smoothed
    linears' names."""
    groups = _groups(feeds)
    for norm_name, linears in groups.items():
        missing = [n for n in linears if n not in act_absmax]
        if missing:
            raise LabkitError(
                f"no activation statistics for {missing[0]!r}; run collect_input_absmax on this model"
            )
        weights = torch.cat([model.get_submodule(n).weight.detach() for n in linears])
        s = smoothquant_scales(act_absmax[linears[0]], weights, alpha)
        _scale_group(model, norm_name, linears, s)
    return [n for linears in groups.values() for n in linears]


def quantize_model(
    model: nn.Module,
    kind: str = "w8a16",
    skip: Iterable[str] = ("lm_head",),
    act_absmax: dict[str, torch.Tensor] | None = None,
    alpha: float = 0.5,
    smooth_only: Iterable[str] | None = None,
) -> list[str]:
    """Replace every ``nn.Linear`` (except names ending in ``skip``) in place; returns their names.

    ``kind``: ``w8a16`` (:class:`W8A16Linear`), ``nf4`` (:class:`NF4Linear`), ``w8a8``
    (:class:`W8A8Linear`) or ``smoothquant`` (W8A8 after smoothing EVERY linear with
    ``act_absmax`` from :func:`collect_input_absmax` and migration strength ``alpha``, as an
    explicit multiply: also where no norm precedes it, so more than a deployed model can fold;
    :func:`fold_smoothquant` + ``w8a8`` is the deployable variant). ``smooth_only``: smooth
    only these linears, plain W8A8 for the rest.
    """
    kinds = ("w8a16", "nf4", "w8a8", "smoothquant")
    if kind not in kinds:
        raise labkit.unknown("kind", kind, kinds)
    if kind == "smoothquant" and act_absmax is None:
        raise LabkitError(
            "smoothquant needs act_absmax (from collect_input_absmax); accepted: a dict name -> tensor"
        )
    names = linear_names(model, skip)
    smooth_only = None if smooth_only is None else set(smooth_only)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        if kind == "w8a16":
            new = W8A16Linear(linear)
        elif kind == "nf4":
            new = NF4Linear(linear)
        elif kind == "w8a8":
            new = W8A8Linear(linear)
        elif smooth_only is not None and name not in smooth_only:
            new = W8A8Linear(linear)
        else:
            if name not in act_absmax:
                raise LabkitError(
                    f"no activation statistics for {name!r}; run collect_input_absmax on this model"
                )
            new = W8A8Linear(linear, smoothquant_scales(act_absmax[name], linear.weight, alpha))
        setattr(parent, child, new)
    return names


@torch.no_grad()
def logit_difference(
    model_a: nn.Module,
    model_b: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> dict[str, float]:
    """Max and mean absolute difference of two models' logits on ``input_ids``, and how often
    their next-token argmax agrees, over the real tokens only when ``attention_mask`` is given
    (padding positions predict nothing anyone reads; counting them would blur both figures)."""
    real = (
        torch.ones(input_ids.shape, dtype=torch.bool)
        if attention_mask is None
        else attention_mask.bool()
    )
    if real.shape != input_ids.shape:
        raise LabkitError(
            f"attention_mask has shape {tuple(real.shape)}, input_ids {tuple(input_ids.shape)}; "
            "accepted: the tokenizer's attention_mask for these input_ids"
        )
    kw = {} if attention_mask is None else {"attention_mask": attention_mask}
    a = model_a(input_ids=input_ids, **kw).logits.float()
    b = model_b(input_ids=input_ids, **kw).logits.float()
    d = (a - b).abs()[real]
    return {
        "max_abs": float(d.max()),
        "mean_abs": float(d.mean()),
        "top1_agreement": float((a.argmax(-1) == b.argmax(-1))[real].float().mean()),
    }


def story_logit_differences(
    model_a: nn.Module, model_b: nn.Module, batches: Iterable[dict]
) -> torch.Tensor:
    """Mean absolute logit difference of two models, one value per sequence (story), over its real
    tokens (``attention_mask == 1``), from one forward call per batch: the spread behind a pooled
    :func:`logit_difference`."""
    out = []
    for batch in batches:
        if "attention_mask" not in batch or "input_ids" not in batch:
            raise LabkitError(
                f"a batch has keys {sorted(batch)}; accepted: a tokenizer batch with "
                "input_ids and attention_mask"
            )
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():
            a = model_a(input_ids=ids, attention_mask=mask).logits.float()
            b = model_b(input_ids=ids, attention_mask=mask).logits.float()
        real = mask.bool().unsqueeze(-1)
        d = ((a - b).abs() * real).sum((1, 2)) / (real.sum((1, 2)) * a.shape[-1]).clamp(min=1)
        out.append(d)
    if not out:
        raise LabkitError("no batches given; accepted: at least one tokenizer batch")
    return torch.cat(out)
