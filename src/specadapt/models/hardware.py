"""What this CPU computes fast: recorded with every benchmark result, and a warning where bf16 is slow.

Speculative decoding on a CPU rests on one property: a forward over a few tokens (a verification block, a
batch of requests) costs about as much as over one, because a one-token step is bound by streaming the
weights. On a CPU with native bf16 matrix instructions (AVX512-BF16 or AMX) that holds for bf16 models. On a
CPU without them (AVX2-only machines, many AMD EPYC and older Intel parts) torch multiplies bf16 matrices of
more than one row on a slow path: on such a machine the 1.5B target's 8-token pass cost about five one-token
steps, and a prompt about five times its float32 cost (``benchmarks/results/cpu_avx2/width_cost.json``). There, verifying
drafted tokens costs nearly as much as generating them one by one, so speculation cannot pay off in bf16.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

import torch


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
            "native_bf16": native_bf16(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def slow_bf16_warning(dtype: torch.dtype, device: torch.device) -> str | None:
    """A warning for bf16 models on a CPU without native bf16, else None."""
    if dtype != torch.bfloat16 or device.type != "cpu" or native_bf16():
        return None
    return (f"this CPU ({cpu_name()}, {torch.backends.cpu.get_cpu_capability()}) has no native bf16 matrix "
            "instructions: bf16 forwards over more than one token (prompts, verification blocks, batches) run "
            "several times slower than one-token steps, so speculative decoding is unlikely to beat target-only "
            "decoding here. Compare with --method autoregressive; --dtype float32 makes prompts faster but "
            "one-token steps slower.")
