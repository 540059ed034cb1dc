"""What this CPU computes fast: recorded with every benchmark result, and a warning where bf16 is slow.

Speculative decoding on a CPU rests on one property: a forward over a few tokens (a verification block, a
batch of requests) costs about as much as over one, because a one-token step is bound by streaming the
weights. On a CPU with native bf16 matrix instructions (AVX512-BF16 or AMX) that holds for bf16 models. On a
CPU without them (AVX2-only machines) torch multiplies bf16 matrices of more than one row on a slow path: on
such a machine the 1.5B target's 8-token pass cost about five one-token steps, and a prompt about five times
its float32 cost (``benchmarks/results/cpu_avx2/width_cost.json``). There, verifying drafted tokens costs
nearly as much as generating them one by one, so speculation cannot pay off in bf16.

What can be done without that hardware: a bf16 linear layer on such a CPU (:class:`WideFloat32Linear`, switched
on by :func:`use_float32_for_wide_products` when a model is loaded) accumulates blocks of several rows in float32.
The products of bf16 values are exact in float32, so this is what a native bf16 kernel computes too (bf16 inputs,
float32 accumulation), in another summation order. Blocks of 2 to ``FUSED_ROWS`` rows take one pass over the
bf16 weight compiled by torch.compile (:func:`fused_bf16_product`), which loads and converts each weight element
once for all rows, where torch's path does so once per row. Wider blocks (prompts) multiply in float32, about
four times faster than in bf16 (``width_cost_wide.json``). One-token steps keep the bf16 path.

A speculative pair's target goes further where memory allows: it keeps a float32 copy of its weights beside the
bf16 ones (:func:`keep_float32_copies`, twice the bf16 weight memory), so its one-token steps stream bf16 weights
and its verification blocks and batches of ``COPY_ROWS`` or more rows multiply in float32 with nothing copied per
call (``width_cost_copies.json``).

On a CPU with native bf16 the one quirk left is the other way round: torch's product of *one* bf16 row by a large
weight (a matrix-vector kernel) is slower than that of two rows. On such a CPU (:func:`pairs_one_rows`), a bf16
model's large layers (:class:`PairedRowLinear`) run one-row products as two-row ones and keep the first row, which
makes the target's one-token steps, all that target-only decoding runs, cheaper (``one_row_cost_final.json``).
"""

from __future__ import annotations

import os
import platform
import threading
import time
import types
import warnings
from functools import cache
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import SpecAdaptWarning

# From this many rows on (a prompt, a wide verification block, a batch), a bf16 product on a CPU without native
# bf16 runs in float32: copying the weight into a float32 buffer costs a few one-row products, and float32 wins
# from about 16 rows on (benchmarks/bf16_rows.py, results/cpu_avx2/bf16_rows.json).
WIDE_ROWS = 16

# With a float32 copy of the weight kept beside the bf16 one (:func:`keep_float32_copies`), nothing is copied per
# call, and float32 wins from 4 rows on for every shape of the target's layers: at 2 rows bf16 is still cheaper,
# at 4 float32 is (results/cpu_avx2/bf16_rows.json against float32_rows.json, the ``W @ x.T`` layout).
COPY_ROWS = 4

# Blocks of 2 to FUSED_ROWS rows (verification blocks, small batches) take one compiled pass over the bf16 weight
# for all their rows (:func:`fused_bf16_product`), in chunks of at most FUSED_CHUNK rows; with float32 copies, only
# up to FUSED_CHUNK rows. Torch's bf16 path reads and converts the weight once per row; copies are read at twice the
# bytes. The target's pass over 2/4/8/16 tokens: 1.17/1.40/2.35/4.25 one-token steps fused, against 1.67/1.79/2.81/
# 3.43 with copies (results/cpu_avx2/width_cost_fused.json).
FUSED_CHUNK = 8
FUSED_ROWS = 16

# ``weight @ x.T`` of 12 to 32 rows multiplies them padded to a multiple of 8 rows (:func:`padded_rows`).
PAD_ROWS, PAD_FROM, PAD_TO = 8, 12, 32

# One-row bf16 products run as two-row ones (:class:`PairedRowLinear`) for weights of at least this many inputs
# and elements: on the AVX512-BF16 machine measured, the default target's MLP layers and output head gained, its
# attention projections did not, nor did the 0.5B draft's layers of 896 inputs (benchmarks/results/one_row_layers.json).
PAIRED_MIN_IN_FEATURES = 1024
PAIRED_MIN_ELEMENTS = 1 << 22
_row_padding = {"on": True}  # :func:`use_row_padding` (benchmarks switch it off to measure what it buys)


@cache
def native_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (what torch's oneDNN bf16 kernels need)."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        if probe is not None:
            return bool(probe())
    except RuntimeError:  # a build without oneDNN
        pass
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The hardware a measurement ran on: every benchmark record carries it, since CPUs differ in kind, not
    only in speed (see the module docstring)."""
    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16(), "transposed_float32_products": transposed_products_win(),
            "paired_bf16_rows": pairs_one_rows(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def slow_bf16_warning(dtype: torch.dtype, device: torch.device) -> str | None:
    """A warning for a bf16 target without float32 copies (:func:`keep_float32_copies`) on a CPU without native
    bf16 where the fused product (:func:`fused_bf16_product`) could not be built in this process, else None (a
    first failure warns where it happens)."""
    if not wants_float32_products(dtype, device) or not _fused["failed"]:
        return None
    return (f"this CPU ({cpu_name()}, {torch.backends.cpu.get_cpu_capability()}) has no native bf16 matrix "
            f"instructions, torch.compile could not build the fused bf16 product ({_fused['failed']}), and the "
            "target keeps no float32 copy of its weights (--no-float32-copies, or too little free memory: it takes "
            "twice the target's bf16 weights). " + SLOW_BLOCKS)


SLOW_BLOCKS = ("Then a bf16 forward over a few tokens (a verification block, a small batch) costs nearly as much as "
               "that many one-token steps, so speculative decoding pays only where drafts are accepted in long runs "
               "(code) and can lose to target-only decoding elsewhere. Compare with --method autoregressive.")


_scratch = threading.local()  # per thread: shape -> a float32 buffer (allocating one per call costs more than the copy)


def float32_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` copied into this thread's float32 buffer of its shape (valid until the next call for that shape)."""
    buffers = _scratch.__dict__.setdefault("buffers", {})
    key = (tuple(weight.shape), weight.device)
    if key not in buffers:
        # A normal tensor, even when first asked for under inference_mode: an inference tensor could not be
        # written outside it (a later no_grad forward, e.g. a distillation teacher's, would fail).
        with torch.inference_mode(False):
            buffers[key] = torch.empty(weight.shape, dtype=torch.float32, device=weight.device)
    return buffers[key].copy_(weight)


@cache
def transposed_products_win() -> bool:
    """Whether this CPU's BLAS multiplies a few float32 rows by a weight faster as ``weight @ x.T`` than as
    ``x @ weight.T`` (what ``F.linear`` asks for). On the AVX2 machines measured, MKL took 3-4 times as long for
    4-16 rows the ``F.linear`` way, about a one-row product's time the other way, and as long both ways from 64
    rows on (``benchmarks/float32_rows.py``). Timed once per process (about 50 ms), on a weight of the size of a
    small model's layer, since other CPUs and BLAS builds may not share the quirk."""
    weight, x = torch.randn(4096, 1024), torch.randn(4, 1024)

    def fastest(product) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            product()
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.inference_mode():
        return fastest(lambda: torch.mm(weight, x.t())) < 0.8 * fastest(lambda: F.linear(x, weight))


@cache
def pairs_one_rows() -> bool:
    """Whether a bf16 model's one-row products run as two-row ones here: on CPUs with AVX512-BF16 and no AMX, the
    kind measured (``benchmarks/results/one_row_cost*.json``). Decided by the CPU's kind, not timed per process: a
    timing probe (tried first) answered no beside a model's load on a machine where fresh processes answered yes,
    and a speed that depends on such a toss is worse than either choice. CPUs with AMX (not measured) and CPUs
    without native bf16 (where two-row bf16 products are the slow ones) keep torch's path."""
    return native_bf16() and not getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()


class PairedRowLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same checkpoint) whose bf16 product of a single row runs as a product of two
    (the row twice; the first result kept), the faster kernel where :func:`pairs_one_rows`. Only without
    autograd: training keeps torch's own path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.bfloat16 or x.numel() != self.in_features or torch.is_grad_enabled():
            return super().forward(x)
        rows = x.reshape(1, -1).repeat(2, 1)
        return F.linear(rows, self.weight, self.bias)[:1].view(*x.shape[:-1], self.out_features)


def use_paired_rows(model: nn.Module, on: bool = True, anywhere: bool = False) -> int:
    """Switch a bf16 model's plain ``nn.Linear`` layers of at least ``PAIRED_MIN_IN_FEATURES`` inputs and
    ``PAIRED_MIN_ELEMENTS`` weights, the output head included, to :class:`PairedRowLinear` where
    :func:`pairs_one_rows` (``anywhere=True``: on any CPU, for a benchmark that measures both; ``on=False``: back);
    returns how many were switched."""
    if not on:
        return _switch(model, PairedRowLinear, nn.Linear, head=True)
    if not (anywhere or pairs_one_rows()):
        return 0
    return _switch(model, nn.Linear, PairedRowLinear, head=True,
                   where=lambda m: m.in_features >= PAIRED_MIN_IN_FEATURES and m.weight.numel() >= PAIRED_MIN_ELEMENTS)


def padded_rows(rows: int, native: bool | None = None) -> int:
    """How many rows ``weight @ x.T`` should multiply for ``rows`` rows: on a CPU without native bf16 its cost is a
    sawtooth in the rows, a multiple of 8 the cheapest (over the default target's layer shapes: 13 rows 33.1 ms,
    16 rows 22.7 ms; ``benchmarks/results/cpu_avx2/row_padding.json``), so blocks of ``PAD_FROM`` to ``PAD_TO`` rows
    are padded with zero rows to the next multiple of ``PAD_ROWS`` (AVX2's 8 floats a register) there; a CPU with
    native bf16 is left as it is (not measured). ``native``: that CPU's property (default: this one's). Off for the
    whole process after ``use_row_padding(False)``."""
    if not (_row_padding["on"] and PAD_FROM <= rows <= PAD_TO) or (native_bf16() if native is None else native):
        return rows
    return -(-rows // PAD_ROWS) * PAD_ROWS


def use_row_padding(on: bool = True) -> None:
    """Switch :func:`padded_rows` on (the default) or off for this process (``benchmarks/copies_ab.py`` compares)."""
    _row_padding["on"] = on


def float32_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for float32 ``x`` and ``weight``, as ``weight @ x.T`` where that is faster
    (with rows padded to a cheaper count: :func:`padded_rows`)."""
    if not transposed_products_win():
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[0]
    if (padded := padded_rows(n)) != n:
        rows = torch.cat([rows, rows.new_zeros(padded - n, rows.shape[1])])
    y = torch.mm(weight, rows.t())[:, :n]
    if bias is not None:
        y += bias[:, None]
    return y.t().contiguous().view(*x.shape[:-1], weight.shape[0])


class Float32Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same checkpoint) whose float32 products of several rows (a verification
    block, a batch) take the faster layout of :func:`float32_product`. Only without autograd: training keeps
    torch's own path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.numel() < 2 * self.in_features or torch.is_grad_enabled():
            return super().forward(x)
        return float32_product(x, self.weight, self.bias)


def _rows_at_once(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for float32 ``x`` of a few rows and a bf16 ``weight``, written as one reduction per row over
    the same weight so that inductor fuses them into one loop: each weight element is loaded and converted once
    for all rows, and the products accumulate in float32 (what a native bf16 kernel computes)."""
    w = weight.float()
    return torch.stack([(w * x[i]).sum(-1) for i in range(x.shape[0])])


_fused: dict = {"kernels": {}, "failed": None}  # (rows, weight shape) -> its compiled _rows_at_once; why compiling failed


def _kernel(rows: int, shape: tuple[int, int]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The compiled :func:`_rows_at_once` for chunks of ``rows`` rows and weights of this ``shape``: a function of
    its own for each, compiled for that shape alone. Dynamo's budget of recompilations (8) is per function, and
    one function for every shape spent it on a pair's two models (a target and a bf16 draft have about ten weight
    shapes): past it, dynamo ran the function uncompiled, converting the whole weight to float32 on every call."""
    key = (rows, *shape)
    if key not in _fused["kernels"]:
        code = _rows_at_once.__code__.replace(co_name=f"_rows_at_once_{rows}_{shape[0]}x{shape[1]}")
        _fused["kernels"][key] = torch.compile(types.FunctionType(code, globals()), dynamic=False)
    return _fused["kernels"][key]


def fused_bf16_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``F.linear(x, weight, bias)`` for bf16 ``x`` of 2 to ``FUSED_ROWS`` rows through the compiled
    :func:`_rows_at_once`, in near-equal chunks of at most ``FUSED_CHUNK`` rows; None (the caller's own path)
    where torch.compile cannot build it here (no C++ compiler, say: warned once)."""
    if _fused["failed"]:
        return None
    rows = x.reshape(-1, x.shape[-1]).float()
    chunks = -(-rows.shape[0] // FUSED_CHUNK)
    sizes = [rows.shape[0] // chunks + (i < rows.shape[0] % chunks) for i in range(chunks)]
    try:
        y = torch.cat([_kernel(len(part), tuple(weight.shape))(part, weight) for part in rows.split(sizes)])
    except Exception as exc:  # a compiler missing or failing: torch's own paths still compute the same products
        _fused["failed"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        warnings.warn(f"torch.compile could not build the fused bf16 product ({_fused['failed']}), so blocks of a "
                      "few tokens take torch's bf16 path on this CPU, or the target's float32 copies where it keeps "
                      f"them. {SLOW_BLOCKS}", SpecAdaptWarning, stacklevel=2)
        return None
    if bias is not None:
        y += bias.float()
    return y.to(x.dtype).view(*x.shape[:-1], weight.shape[0])


def compile_fused_products(*models: nn.Module | None) -> int:
    """Build the fused kernels ``models`` will use (every chunk size for every weight shape of theirs), so that no
    request or timed run pays for compiling them: tens of seconds the first time, a few with inductor's disk
    cache. Returns the number of (weight shape, chunk size) pairs run; 0 where no layer multiplies fused."""
    shapes = {}
    for model in models:
        for m in model.modules() if model is not None else ():
            if isinstance(m, WideFloat32Linear) and m.fused and m.weight.dtype == torch.bfloat16:
                shapes.setdefault(tuple(m.weight.shape), m.weight)
    done = 0
    with torch.inference_mode():
        for weight in shapes.values():
            for rows in range(2, FUSED_CHUNK + 1):
                x = torch.zeros(rows, weight.shape[1], dtype=torch.bfloat16, device=weight.device)
                if fused_bf16_product(x, weight, None) is None:
                    return done
                done += 1
    return done


class WideFloat32Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same checkpoint) whose bf16 products of several rows accumulate in float32:
    2 to ``FUSED_ROWS`` rows in one compiled pass over the bf16 weight (:func:`fused_bf16_product`, if ``fused``;
    up to ``FUSED_CHUNK`` where it keeps a float32 copy of its weight); more rows (``COPY_ROWS`` or more without
    ``fused``) from that copy (``weight32``, not part of the checkpoint); ``WIDE_ROWS`` or more through a per-call
    float32 copy (unless ``convert``: False for the output head, whose buffer would take a GB). Only without
    autograd: the float32 weight is a shared scratch buffer, which a backward pass would need intact."""

    weight32: torch.Tensor | None = None
    fused: bool = True
    convert: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if x.dtype != torch.bfloat16 or rows < 2 or torch.is_grad_enabled():
            return super().forward(x)
        fused_rows = FUSED_ROWS if self.weight32 is None else FUSED_CHUNK
        if self.fused and rows <= fused_rows and (y := fused_bf16_product(x, self.weight, self.bias)) is not None:
            return y
        if self.weight32 is not None and rows >= COPY_ROWS:
            weight = self.weight32
        elif self.convert and rows >= WIDE_ROWS:
            weight = float32_weight(self.weight)
        else:
            return super().forward(x)
        return float32_product(x.float(), weight, None if self.bias is None else self.bias.float()).to(x.dtype)


def _switch(model: nn.Module, old: type, new: type, head: bool,
            where: Callable[[nn.Module], bool] = lambda m: True) -> int:
    """Turn ``model``'s layers of exactly type ``old`` for which ``where`` holds into ``new`` (the output head too
    if ``head``)."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    layers = [m for m in model.modules() if type(m) is old and (head or m is not out) and where(m)]
    for m in layers:
        m.__class__ = new
    return len(layers)


def use_float32_for_wide_products(model: nn.Module, on: bool = True) -> int:
    """Switch ``model``'s plain ``nn.Linear`` layers, the output head included, to :class:`WideFloat32Linear`
    (``on=False``: back); returns how many were switched. The layers keep their parameters, so nothing else sees a
    difference. The head never converts its weight per call: that buffer would take a GB (a 150k vocabulary)."""
    switched = _switch(model, *((nn.Linear, WideFloat32Linear) if on else (WideFloat32Linear, nn.Linear)), head=True)
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(out, WideFloat32Linear):
        out.convert = False
    return switched


def use_fused_products(model: nn.Module, on: bool = True) -> None:
    """Let ``model``'s :class:`WideFloat32Linear` layers multiply blocks of a few rows in one fused pass (the
    default) or not (``on=False``: what a benchmark compares against)."""
    for m in model.modules():
        if isinstance(m, WideFloat32Linear):
            m.fused = on


def keep_float32_copies(model: nn.Module, on: bool = True) -> int:
    """Give a bf16 model's linear layers, the output head included, a float32 copy of their weights
    (``on=False``: drop them); returns the bytes the copies take. Then blocks of ``COPY_ROWS`` or more rows (a
    verification block, a batch) multiply in float32 without a per-call copy, where bf16 on a CPU without native
    bf16 costs about a one-token step per row (8 tokens: 3.3 steps against 4.1, ``width_cost_copies.json``). Costs twice the
    model's bf16 weight memory; for the target of a speculative pair, whose blocks are what it runs."""
    if not on:
        for m in model.modules():
            if isinstance(m, WideFloat32Linear):
                m.weight32 = None
        return 0
    use_float32_for_wide_products(model)
    total = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WideFloat32Linear):
                if m.weight32 is None:
                    m.weight32 = m.weight.detach().float()
                total += m.weight32.numel() * 4
    return total


def has_float32_copies(model: nn.Module) -> bool:
    """Whether :func:`keep_float32_copies` gave ``model`` its copies (what benchmark records report)."""
    return any(isinstance(m, WideFloat32Linear) and m.weight32 is not None for m in model.modules())


FLOAT32_COPIES_HELP = ("No float32 copy of the target's weights. By default, on a CPU without native bf16, a bf16 target "
                       "keeps one where it multiplies blocks of 4+ tokens (a draft's verification, a server's batches; "
                       "twice its weight memory, only where that much stays free): the same products in float32, "
                       "another summation order.")


def memory_available() -> int | None:
    """Bytes of memory the system can still give (Linux: MemAvailable in /proc/meminfo), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def float32_copies_fit(model: nn.Module) -> bool:
    """Whether :func:`keep_float32_copies` would leave at least as much memory free as the copies take."""
    needed = 4 * sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    available = memory_available()
    return available is None or 2 * needed <= available


def keep_float32_copies_where_they_pay(model: nn.Module) -> bool:
    """:func:`keep_float32_copies` where the CPU lacks native bf16 and the memory fits (a speculative pair's target);
    returns whether ``model`` has them now."""
    if wants_float32_products(model.dtype, model.device) and float32_copies_fit(model):
        return keep_float32_copies(model) > 0
    return False


def use_transposed_float32_products(model: nn.Module, on: bool = True) -> int:
    """Switch a float32 model's plain ``nn.Linear`` layers, the output head included, to :class:`Float32Linear`
    if :func:`transposed_products_win` on this CPU (``on=False``: back); returns how many were switched."""
    if not on:
        return _switch(model, Float32Linear, nn.Linear, head=True)
    return _switch(model, nn.Linear, Float32Linear, head=True) if transposed_products_win() else 0


def wants_float32_products(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a model of this dtype on this device should multiply wide blocks in float32 (bf16 on a CPU
    without native bf16)."""
    return dtype == torch.bfloat16 and device.type == "cpu" and not native_bf16()
