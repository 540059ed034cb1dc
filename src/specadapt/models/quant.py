"""Weight-only quantization of the draft (or the target): int8 or int4 linear layers, output head included.

On a CPU a decode step is memory-bound: it streams every weight once per token.
Storing the draft's linear weights in 4 bits (or 8) cuts the bytes streamed,
and so the draft's cost per step. Speculative decoding stays lossless with any
draft: the verifier uses exactly the ``q`` the (quantized) draft sampled from.

A quantized *target* is another model: the output is exactly that quantized
target's (lossless w.r.t. the quantized target), not the float target's, so
such results are labelled ``target_quant`` wherever they are reported.

Kernels are torch's own (no torchao needed; torchao 0.18's CPU int4 path,
``PrototypeInt4WeightOnlyConfig``, calls the same kernel, and its
``Int8WeightOnlyConfig`` was slower than bf16 here: see
``benchmarks/results/draft_cost_torchao.json``):

- int4: ``aten._convert_weight_to_int4pack_for_cpu`` + ``aten._weight_int4pack_mm_for_cpu``,
  asymmetric, one scale and zero per ``group_size`` consecutive inputs of an output row,
  dequantized as ``(q - 8) * scale + zero`` with ``q`` in 0..15. The kernel is fast for one
  to a few rows (decode steps, a batch's steps) and slow for many (prefill), so a layer also
  keeps that dequantized weight in the compute dtype (another 16 bits per weight; not the
  output head, which sees one row per request) and multiplies by it from ``wide_rows()``
  rows on: the same weights, so the draft is one model whichever path a pass takes.
- int8: ``aten._weight_int8pack_mm``, symmetric, one scale per output row (the
  kernel has no groups).

Activations stay in the model's dtype (the CPU kernels take fp32, bf16 and
fp16), so an fp32 target can be paired with an int4 draft.

CUDA: torch's tinygemm kernels (``aten._convert_weight_to_int4pack`` +
``aten._weight_int4pack_mm``, bf16 activations only) use the same numerics but a
different packing; they are not wired here because they cannot be tested on
this project's machines, so quantizing a model on a GPU raises a clear error.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SpecAdaptError
from .hardware import Float32Linear, PairedRowLinear, WideFloat32Linear, wants_float32_products

SCHEMES = ("none", "int8", "int4")
# "auto": int4 where this module's kernels run (CPU), no quantization elsewhere (no GPU kernels yet), so the
# default is the fastest lossless draft on a CPU and still loads on a GPU.
AUTO = "auto"
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu accepts
DEFAULT_GROUP_SIZE = 32
_INT4_N_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu packs output rows in tiles of 16
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ROWS_PER_CHUNK = 4096
# From this many input rows on (a prompt's prefill, a catch-up), an int4 layer multiplies by its kept dequantized
# weight. On one layer, whose weight stays in the CPU's caches between calls, torch's int4 kernel loses to a bf16
# matmul from 5 rows on (results/int4_rows_wide.json); in the whole draft, whose weights stream from memory every
# step, the kernel reads a quarter of the bytes and wins up to 16 rows (a draft step at 8 rows: 34 ms against 53 ms,
# at 16: 65 against 76), ties at 24 and loses from 32 on (benchmarks/batch_draft_step.py,
# results/batch_draft_step*.json). The switch sits between 16 and 24.
DEQUANTIZE_ROWS = 20
# Where a bf16 product runs in float32 (a CPU without native bf16: models/hardware.py), the copy is converted per
# call, a pass over the weight like the unpacking that 128 was measured against (~2 ms per 4.4M weights, with
# native bf16); not re-measured on such a CPU.
CONVERTED_ROWS = 128
# torch's CPU int4 kernel is built for bf16 activations: with float32 ones it took 14-34x as long on an AVX2 machine,
# at one row 4-6x the plain float32 layer (benchmarks/float32_rows.py, results/cpu_avx2/float32_rows.json). So a
# float32 model's int4 layers keep bf16 scales and compute in bf16; they still take and return float32.
INT4_COMPUTE_DTYPE = {torch.float32: torch.bfloat16}


def _shape_only(out_features: int, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    # The float weight is gone; code that only asks for its shape (e.g. the vocabulary width of an
    # output head) still works, and any attempt to compute with it fails on the meta device.
    return torch.empty((out_features, in_features), dtype=dtype, device="meta")


class Int4Linear(nn.Module):
    """``nn.Linear`` with group-wise asymmetric int4 weights (torch's CPU int4 kernel)."""

    def __init__(self, packed: torch.Tensor, wide: torch.Tensor | None, scale_and_zero: torch.Tensor,
                 bias: torch.Tensor | None, in_features: int, out_features: int, group_size: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("packed", packed)  # uint8 [N padded to 16, K / 2], the kernel's own layout
        self.register_buffer("wide", wide)  # [N, K]: the same weights dequantized, in the compute dtype; or None
        self.register_buffer("scale_and_zero", scale_and_zero)  # [K / group, N padded, 2], the dtype it computes in
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = DEFAULT_GROUP_SIZE, wide: bool = True) -> "Int4Linear":
        """``wide``: also keep the dequantized weight, for inputs of many rows (another 16 bits per weight; an
        output head, which sees one row per request, goes without)."""
        return cls.from_weight(linear.weight.detach(), linear.bias, group_size, wide)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, group_size: int = DEFAULT_GROUP_SIZE,
                    wide: bool = True) -> "Int4Linear":
        """The layer ``x @ weight.T + bias`` with ``weight`` [out, in] quantized (see :meth:`from_linear`)."""
        n, k = weight.shape
        _check_int4_group(group_size, k)
        pad = -n % _INT4_N_MULTIPLE  # zero rows, sliced off after the matmul
        q = torch.full((n + pad, k), 8, dtype=torch.int32)
        sz = torch.zeros((n + pad, k // group_size, 2))
        for start in range(0, n, _ROWS_PER_CHUNK):  # in slices: an output head's fp32 copy would take GBs
            w = weight[start : start + _ROWS_PER_CHUNK].to(torch.float32, copy=True).reshape(-1, k // group_size, group_size)
            lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
            scale = hi.sub_(lo).div_(15).clamp_min_(1e-6)
            rows = slice(start, start + w.shape[0])
            q[rows] = w.sub_(lo).div_(scale).round_().clamp_(0, 15).reshape(-1, k)
            sz[rows, :, :1], sz[rows, :, 1:] = scale, lo.add_(scale, alpha=8)  # (q - 8) * scale + zero == q * scale + lo
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        dtype = INT4_COMPUTE_DTYPE.get(weight.dtype, weight.dtype)
        # The copy is built from the scales and zeros as the kernel holds them (rounded to its dtype).
        kept = _dequantize(q[:n], sz[:n].to(dtype), group_size, dtype) if wide else None
        scale_and_zero = sz.transpose(0, 1).contiguous().to(dtype)
        bias = None if bias is None else bias.detach().clone()
        return cls(packed, kept, scale_and_zero, bias, k, n, group_size)

    def rows(self, start: int, stop: int) -> "Int4Linear":
        """A layer computing this one's outputs ``start:stop``, reading row slices of its weights (views: only the
        scales are copied). Valid where ``start`` sits on a boundary of the kernel's packing tiles (see
        :func:`_packs_side_by_side`)."""
        bias = None if self.bias is None else self.bias[start:stop]
        wide = None if self.wide is None else self.wide[start:stop]
        return Int4Linear(self.packed[start:stop], wide, self.scale_and_zero[:, start:stop].contiguous(), bias,
                          self.in_features, stop - start, self.group_size)

    @property
    def weight(self) -> torch.Tensor:
        return _shape_only(self.out_features, self.in_features, self.scale_and_zero.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the kernel computes with [out, in] (fp32), for checks."""
        eye = torch.eye(self.in_features, dtype=torch.float32, device=self.packed.device)
        sz = self.scale_and_zero.float()
        return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, self.group_size, sz)[:, : self.out_features].t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, self.in_features).to(self.scale_and_zero.dtype).contiguous()
        if self.wide is not None and x2.shape[0] >= wide_rows(x2.dtype, x2.device):
            if wants_float32_products(x2.dtype, x2.device):  # bf16 without native bf16: see models/hardware.py
                y = nn.functional.linear(x2.float(), self.wide.float()).to(x2.dtype)
            else:
                y = nn.functional.linear(x2, self.wide)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scale_and_zero)
            if y.shape[-1] != self.out_features:
                y = y[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, bias={self.bias is not None}"


@functools.lru_cache(maxsize=None)
def _packs_side_by_side(in_features: int, outs: tuple[int, ...]) -> bool:
    """Whether the kernel's packing of weights with ``outs`` output rows stacked equals the parts' packings stacked,
    so that row slices of the one are the others. It packs output rows in tiles (of 64 here), so this holds where
    every part but the last fills whole tiles (the 0.5B draft's 896/128/128 and 4864/4864), not after a part of
    32; checked on random values rather than assumed."""
    g = torch.Generator().manual_seed(0)
    parts = [torch.randint(0, 16, (n, in_features), dtype=torch.int32, generator=g) for n in outs]
    packed = [torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1) for q in [torch.cat(parts), *parts]]
    return torch.equal(packed[0], torch.cat(packed[1:]))


def wide_rows(dtype: torch.dtype, device: torch.device) -> int:
    """From how many input rows an int4 layer multiplies by its kept dequantized weight instead of the kernel."""
    return CONVERTED_ROWS if wants_float32_products(dtype, device) else DEQUANTIZE_ROWS


def _dequantize(q: torch.Tensor, scale_and_zero: torch.Tensor, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """``(q - 8) * scale + zero`` [N, K] in ``dtype``, from ``q`` [N, K] and per-group ``scale_and_zero`` [N, K / group, 2]."""
    n, k = q.shape
    out = torch.empty((n, k), dtype=dtype)
    scale, zero = scale_and_zero.float().unbind(-1)
    for start in range(0, n, _ROWS_PER_CHUNK):  # in slices, as for the packing
        rows = slice(start, start + _ROWS_PER_CHUNK)
        groups = q[rows].reshape(-1, k // group_size, group_size).float().sub_(8)
        out[rows] = groups.mul_(scale[rows, :, None]).add_(zero[rows, :, None]).reshape(-1, k)
    return out


class Int8Linear(nn.Module):
    """``nn.Linear`` with symmetric int8 weights, one scale per output row (torch's int8 kernel)."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)  # int8 [N, K]
        self.register_buffer("scales", scales)  # [N], the activations' dtype
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        weight = linear.weight.detach()
        n, k = weight.shape
        q = torch.empty((n, k), dtype=torch.int8)
        scale = torch.empty(n)
        for start in range(0, n, _ROWS_PER_CHUNK):  # in slices, as for int4
            w = weight[start : start + _ROWS_PER_CHUNK].to(torch.float32, copy=True)
            s = w.abs().amax(1).div_(127).clamp_min_(1e-8)
            scale[start : start + w.shape[0]] = s
            q[start : start + w.shape[0]] = w.div_(s[:, None]).round_().clamp_(-127, 127)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(q, scale.to(weight.dtype), bias)

    @property
    def weight(self) -> torch.Tensor:
        return _shape_only(self.out_features, self.in_features, self.scales.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return self.qweight.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, self.in_features).to(self.scales.dtype).contiguous()
        y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


QUANT_LINEARS = (Int4Linear, Int8Linear)


@dataclass(frozen=True)
class QuantReport:
    """What :func:`quantize_model` did."""

    scheme: str
    group_size: int | None  # int4's group size; None for int8 (per output row) and none
    layers: int  # linear layers replaced
    bytes_before: int  # their float weights
    bytes_after: int  # their packed weights, scales and zeros


def _check_int4_group(group_size: int, in_features: int, name: str = "", role: str = "draft") -> None:
    where = f" layer {name!r}" if name else " layer"
    if group_size not in INT4_GROUP_SIZES:
        raise SpecAdaptError(
            f"{role} int4 group size {group_size} is not supported; torch's CPU int4 kernel takes "
            f"{', '.join(map(str, INT4_GROUP_SIZES))}: pick one of those (32 is the most accurate)."
        )
    if in_features % group_size:
        fits = [g for g in INT4_GROUP_SIZES if in_features % g == 0]
        fix = f"use a group size that divides it ({', '.join(map(str, fits))})" if fits else "use int8 or no quantization for this model"
        raise SpecAdaptError(f"{role} int4 group size {group_size} does not divide the{where}'s in_features {in_features}: {fix}.")


def check_scheme(scheme: str, group_size: int | None = None, role: str = "draft") -> str:
    """Validate a quantization name (and group size) of the ``role`` model ("draft" or "target") before any
    model is loaded; returns the scheme."""
    allowed = (*SCHEMES, AUTO) if role == "draft" else SCHEMES  # a quantized target is opt-in: no "auto"
    if scheme not in allowed:
        raise SpecAdaptError(f"unknown {role} quantization {scheme!r}; use one of: {', '.join(allowed)}.")
    if group_size is not None:
        if scheme not in ("int4", AUTO):
            raise SpecAdaptError(
                f"a {role} group size applies to int4 only ({scheme} uses "
                f"{'one scale per output row' if scheme == 'int8' else 'no quantization'}); leave the group size unset."
            )
        if group_size not in INT4_GROUP_SIZES:
            _check_int4_group(group_size, group_size, role=role)
    return scheme


def resolve_scheme(scheme: str, device: torch.device | str) -> str:
    """The scheme ``scheme`` means on ``device``: ``auto`` is int4 on CPU and none elsewhere."""
    if scheme != AUTO:
        return scheme
    return "int4" if torch.device(device).type == "cpu" else "none"


def quantization_of(model: nn.Module) -> tuple[str, int | None]:
    """The scheme and int4 group size ``model``'s linear layers were quantized with: ``("none", None)`` for a float model."""
    for m in model.modules():
        if isinstance(m, Int4Linear):
            return "int4", m.group_size
        if isinstance(m, Int8Linear):
            return "int8", None
    return "none", None


def quant_help(role: str) -> str:
    """The help text of the ``--draft-quant`` / ``--target-quant`` options (one text for every command)."""
    if role == "draft":
        effect = "cheaper draft steps, still lossless"
    else:
        effect = "a cheaper target; output is lossless w.r.t. the quantized target, not the float one"
    auto = f", or {AUTO} (int4 on CPU, none on GPU)" if role == "draft" else ""
    return f"Weight-only quantization of the {role}'s linear layers: {', '.join(SCHEMES)} (CPU; {effect}){auto}."


def group_size_help(role: str) -> str:
    sizes = ", ".join(str(g) for g in INT4_GROUP_SIZES if g != DEFAULT_GROUP_SIZE)
    return f"Group size of --{role}-quant int4: {DEFAULT_GROUP_SIZE} (default), {sizes}."


# Projections of a Llama-family layer that read the same input: quantized as one int4 layer each group, so a
# decode step can make one kernel call for them (:func:`fused_layer`).
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
_FUSED: "weakref.WeakKeyDictionary[nn.Module, Int4Linear]" = weakref.WeakKeyDictionary()


def fused_layer(parent: nn.Module) -> Int4Linear | None:
    """The int4 layer that computes ``parent``'s sibling projections side by side (q/k/v of an attention module,
    gate/up of an MLP), outputs concatenated in :data:`SIBLINGS` order; None where :func:`quantize_model` did not
    fuse them.

    A one-token step of a small draft spends much of a projection's time on the call, not the weights (the 0.5B
    draft's key and value projections are 128 outputs wide): one call for q/k/v and one for gate/up cut its step
    by about a tenth (``benchmarks/fused_step.py``). The projections themselves read row slices of this layer's
    weights, so the transformers forward, which calls them, computes with the very same weights and no copy is
    kept twice."""
    return _FUSED.get(parent)


def _fuse_siblings(model: nn.Module, targets: list[tuple[str, nn.Linear]], group: int) -> tuple[set[str], list[Int4Linear]]:
    """Quantize each group of sibling projections (:data:`SIBLINGS`) as one int4 layer and put its row slices in
    their places; returns the names of the layers done so and the fused layers."""
    by_name = dict(targets)
    done: set[str] = set()
    layers: list[Int4Linear] = []
    for parent_name, parent in model.named_modules():
        for names in SIBLINGS:
            full = [f"{parent_name}.{n}" if parent_name else n for n in names]
            parts = [by_name.get(n) for n in full]
            if any(p is None for p in parts):
                continue
            same_input = len({(p.in_features, p.weight.dtype, p.bias is None) for p in parts}) == 1
            outs = tuple(p.out_features for p in parts)
            if not same_input or any(n % _INT4_N_MULTIPLE for n in outs) or not _packs_side_by_side(parts[0].in_features, outs):
                continue
            bias = None if parts[0].bias is None else torch.cat([p.bias.detach() for p in parts])
            fused = Int4Linear.from_weight(torch.cat([p.weight.detach() for p in parts]), bias, group)
            start = 0
            for name, part in zip(names, parts):
                setattr(parent, name, fused.rows(start, start + part.out_features))
                start += part.out_features
            _FUSED[parent] = fused
            layers.append(fused)
            done.update(full)
    return done, layers


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    plain = (nn.Linear, Float32Linear, PairedRowLinear, WideFloat32Linear)  # the same parameters, other products
    return [(name, m) for name, m in model.named_modules() if type(m) in plain]


def quantize_model(model: nn.Module, scheme: str, group_size: int | None = None, role: str = "draft") -> QuantReport:
    """Replace every ``nn.Linear`` of ``model`` (output head included, also inside a
    :class:`~specadapt.models.draft_vocab.SubsetHead`) by its int8/int4 version, in place.

    ``group_size`` (int4 only): inputs per scale/zero, one of 32, 64, 128, 256 (default 32);
    it must divide every layer's in_features. Call this after
    :func:`~specadapt.models.draft_vocab.restrict_vocabulary` (or before: a quantized head
    can't be restricted, so restricting first is required to get an int4 subset head).
    ``scheme="none"`` leaves the model unchanged. Raises :class:`SpecAdaptError` on a bad
    name or group size, a model without linear layers, one on a GPU, or non-float weights;
    ``role`` ("draft" or "target") names the model in those messages."""
    check_scheme(scheme, group_size, role)
    if not isinstance(model, nn.Module):
        raise SpecAdaptError(f"can only quantize a torch nn.Module, got {type(model).__name__}.")
    if scheme == AUTO:
        weight = next(model.parameters(), None)
        scheme = resolve_scheme(scheme, weight.device if weight is not None else "cpu")
    if scheme == "none":
        return QuantReport(scheme, None, 0, 0, 0)
    group = (group_size or DEFAULT_GROUP_SIZE) if scheme == "int4" else None
    targets = _linears(model)
    if not targets:
        others = sorted({type(m).__name__ for m in model.modules() if type(m).__name__ in ("Conv1D", "Linear") or isinstance(m, nn.Linear)})
        already = any(isinstance(m, QUANT_LINEARS) for m in model.modules())
        if already:
            raise SpecAdaptError("this model is already quantized; load it again to quantize it differently.")
        found = f" (it has {', '.join(others)} modules, which are not supported)" if others else ""
        raise SpecAdaptError(
            f"{type(model).__name__} has no torch.nn.Linear layers to quantize{found}: weight-only quantization "
            f"supports models built from nn.Linear (Llama, Qwen, Mistral, ...); use {role} quantization 'none' for this model."
        )
    for name, linear in targets:
        weight = linear.weight
        if weight.device.type != "cpu":
            raise SpecAdaptError(
                f"{role} quantization runs on CPU only (layer {name!r} is on {weight.device}); on a GPU use "
                f"{role} quantization 'none', or quantize with torchao (Int4WeightOnlyConfig) yourself."
            )
        if weight.dtype not in _FLOAT_DTYPES:
            raise SpecAdaptError(f"layer {name!r} has {weight.dtype} weights; only float32/bfloat16/float16 models can be quantized.")
        if scheme == "int4":
            _check_int4_group(group, linear.in_features, name, role)
    # The output head sees one row per request (logits of the last position only), never a prompt's many rows.
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    heads = {id(head), id(getattr(head, "proj", None))}
    before = after = 0
    fused, fused_layers = _fuse_siblings(model, targets, group) if scheme == "int4" else (set(), [])
    for name, linear in targets:
        before += linear.weight.numel() * linear.weight.element_size()
        if name in fused:  # its weights are counted with the fused layer's; its scales are its own
            after += model.get_submodule(name).scale_and_zero.nbytes
            continue
        new = (Int4Linear.from_linear(linear, group, wide=id(linear) not in heads) if scheme == "int4"
               else Int8Linear.from_linear(linear))
        after += sum(b.numel() * b.element_size() for n, b in new.named_buffers() if n != "bias")
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False  # the head no longer shares the embedding's float weight
    after += sum(b.numel() * b.element_size() for layer in fused_layers for n, b in layer.named_buffers() if n != "bias")
    return QuantReport(scheme, group, len(targets), before, after)
