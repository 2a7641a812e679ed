"""The machine a benchmark ran on: CPU model, its int8 instruction sets, cores, runtime versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import onnxruntime as ort

__all__ = ["machine_info"]

_INT8_FLAGS = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8")


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model and int8 ISA (avx2, avx512_vnni, avx_vnni, amx_int8) as /proc/cpuinfo lists them."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first processor's lines
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = fields.get("model name") or platform.processor() or platform.machine()
    flags = [f for f in _INT8_FLAGS if f in fields.get("flags", "").split()]
    return {
        "cpu": cpu,
        "int8_isa": flags,
        "cores": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "ort_threads": threads,
        "python": platform.python_version(),
    }
