"""What a model's config says about its context (and where the model came from): read without
torch, so every caller that only needs the trained length, the sliding window or the model's
identity (the CLI, lm-eval, benchmarks, a serving engine) gets it without loading the attention
code."""

from __future__ import annotations


class UnsupportedModelError(ValueError):
    """The model cannot be extended (no RoPE, attention outside the AttentionInterface, ...)."""


def trained_length(config) -> int:
    """The context length the model was trained to (``max_position_embeddings``).

    Example:
        >>> from types import SimpleNamespace
        >>> trained_length(SimpleNamespace(max_position_embeddings=8192))
        8192
    """
    length = getattr(config, "max_position_embeddings", None)
    if not isinstance(length, int) or length <= 0:
        raise UnsupportedModelError(
            f"{type(config).__name__} has no max_position_embeddings: cannot tell the trained length"
        )
    return length


def name_or_path(config) -> str | None:
    """Where the model was loaded from (``config._name_or_path``): what a ``longreach tune`` record
    is matched by, so ``auto`` finds the choice measured on this model.

    Example:
        >>> from types import SimpleNamespace
        >>> name_or_path(SimpleNamespace(_name_or_path="HuggingFaceTB/SmolLM2-135M")), name_or_path(SimpleNamespace())
        ('HuggingFaceTB/SmolLM2-135M', None)
    """
    return getattr(config, "_name_or_path", None) or None


def sliding_window(config) -> int | None:
    """The sliding window of the model's windowed attention layers (Mistral, Qwen2 with
    ``use_sliding_window``); None when every layer attends to the whole context.

    Example:
        >>> from types import SimpleNamespace
        >>> sliding_window(SimpleNamespace(sliding_window=4096, layer_types=["full_attention"]))
    """
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not isinstance(window, int) or window <= 0:
        return None
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return window
