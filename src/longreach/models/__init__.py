"""Models: loading (the embedded default, GGUF files, folders, hub ids), what their config says
about context (``config``, no torch needed) and what LongReach can do with them (``info``).

Attributes load on first use, so ``longreach.models.config`` never pulls in torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DEFAULT_MODEL": "embedded",
    "EMBEDDED": "embedded",
    "ModelNotAvailableError": "embedded",
    "embedded_gguf": "embedded",
    "load_model": "loading",
    "ModelInfo": "info",
    "model_info": "info",
    "UnsupportedModelError": "config",
    "sliding_window": "config",
    "trained_length": "config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
