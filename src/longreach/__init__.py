"""LongReach: read far past a RoPE model's trained context, with no fine-tuning.

Example:
    >>> import longreach
    >>> model, tokenizer = longreach.load_model("smollm2-135m")  # doctest: +SKIP
    >>> longreach.extend(model, "self-extend:group_size=4,window=1024")  # doctest: +SKIP
    >>> longreach.restore(model)  # doctest: +SKIP

The public names load on first use, so ``import longreach`` (and ``longreach --help``) does not
wait for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "METHODS": "longreach.methods",
    "DualChunk": "longreach.methods",
    "InfLLM": "longreach.methods",
    "InputTooLongError": "longreach.methods",
    "LMInfinite": "longreach.methods",
    "Method": "longreach.methods",
    "MethodSpecError": "longreach.methods",
    "Part": "longreach.methods",
    "ReRoPE": "longreach.methods",
    "RopeScaling": "longreach.methods",
    "SelfExtend": "longreach.methods",
    "StreamingLLM": "longreach.methods",
    "String": "longreach.methods",
    "Vanilla": "longreach.methods",
    "parse_method": "longreach.methods",
    "ModelInfo": "longreach.models",
    "ModelNotAvailableError": "longreach.models",
    "UnsupportedModelError": "longreach.models",
    "load_model": "longreach.models",
    "model_info": "longreach.models",
    "current_method": "longreach.integrations.transformers",
    "extend": "longreach.integrations.transformers",
    "prefill": "longreach.integrations.transformers",
    "restore": "longreach.integrations.transformers",
    "tune": "longreach.eval.tune",
    "TuneResult": "longreach.eval.tune",
}

__all__ = [
    "DualChunk",
    "InfLLM",
    "InputTooLongError",
    "LMInfinite",
    "METHODS",
    "Method",
    "MethodSpecError",
    "ModelInfo",
    "ModelNotAvailableError",
    "Part",
    "ReRoPE",
    "RopeScaling",
    "SelfExtend",
    "StreamingLLM",
    "String",
    "TuneResult",
    "UnsupportedModelError",
    "Vanilla",
    "current_method",
    "extend",
    "load_model",
    "model_info",
    "parse_method",
    "prefill",
    "restore",
    "tune",
]

if TYPE_CHECKING:  # what a type checker and an IDE see; at run time __getattr__ loads them
    from longreach.eval.tune import TuneResult, tune
    from longreach.integrations.transformers import current_method, extend, prefill, restore
    from longreach.methods import (
        METHODS,
        DualChunk,
        InfLLM,
        InputTooLongError,
        LMInfinite,
        Method,
        MethodSpecError,
        Part,
        ReRoPE,
        RopeScaling,
        SelfExtend,
        StreamingLLM,
        String,
        Vanilla,
        parse_method,
    )
    from longreach.models import ModelInfo, ModelNotAvailableError, UnsupportedModelError, load_model, model_info


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'longreach' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
