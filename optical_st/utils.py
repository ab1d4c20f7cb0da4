"""Small runtime helpers shared by the examples and the experiment harness."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["default_cache_dir", "fast_bf16_available"]


def fast_bf16_available(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 autocast speeds training up on ``device``.

    CUDA: the GPU supports bf16 (Ampere and newer). CPU: the CPU has AVX512-BF16 or AMX tiles; elsewhere bf16 is
    emulated on CPU and slower than fp32, so "auto" precision falls back to fp32.
    """
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:  # private torch helpers; absent on some builds
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def default_cache_dir() -> Path:
    """Where optical_st caches converted models and embeddings: ``$OPTICAL_ST_CACHE``, else
    ``$XDG_CACHE_HOME/optical_st``, else ``~/.cache/optical_st``."""
    if os.environ.get("OPTICAL_ST_CACHE"):
        return Path(os.environ["OPTICAL_ST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "optical_st"
