"""LongReach: read far past a RoPE model's trained context, with no fine-tuning.

Example:
    >>> import longreach
    >>> model, tokenizer = longreach.load_model("smollm2-135m")  # doctest: +SKIP
    >>> longreach.extend(model, longreach.SelfExtend(group_size=4, window=1024))  # doctest: +SKIP
    >>> longreach.restore(model)  # doctest: +SKIP
"""

from longreach.generation import prefill
from longreach.info import ModelInfo, model_info
from longreach.integration import UnsupportedModelError, current_method, extend, restore
from longreach.methods import (
    METHODS,
    DualChunk,
    InfLLM,
    InputTooLongError,
    LMInfinite,
    Method,
    Part,
    ReRoPE,
    RopeScaling,
    SelfExtend,
    StreamingLLM,
    Vanilla,
)
from longreach.models import ModelNotAvailableError, load_model

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "DualChunk",
    "InfLLM",
    "InputTooLongError",
    "LMInfinite",
    "Method",
    "ModelInfo",
    "ModelNotAvailableError",
    "Part",
    "ReRoPE",
    "RopeScaling",
    "SelfExtend",
    "StreamingLLM",
    "UnsupportedModelError",
    "Vanilla",
    "current_method",
    "extend",
    "load_model",
    "model_info",
    "prefill",
    "restore",
]
