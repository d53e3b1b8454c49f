"""Which float type a CPU computes fastest: bfloat16 where it has native instructions for it
(AVX512-BF16 or AMX), float32 everywhere else (bfloat16 without them is emulated, 10-50x slower
than float32 on an AVX2 machine). Shared by every plugin that runs torch models on the CPU."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_has_fast_bfloat16() -> bool:
    """True when the CPU has native bfloat16 instructions (AVX512-BF16 or AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def fast_cpu_dtype(preferred: str = "bfloat16") -> str:
    """``preferred`` when this CPU computes it natively, else ``float32`` (names as torch spells them)."""
    if preferred == "bfloat16" and not cpu_has_fast_bfloat16():
        return "float32"
    return preferred


__all__ = ["cpu_has_fast_bfloat16", "fast_cpu_dtype"]
