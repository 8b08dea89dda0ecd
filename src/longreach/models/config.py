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


#: The config attribute :func:`~longreach.models.loading.load_model` writes the model's name into:
#: saved with the config, so the safetensors copy vLLM serves keeps the name it was made from.
MODEL_NAME_KEY = "longreach_model"


def model_identity(config) -> str | None:
    """The name a ``longreach tune`` record is matched by, so that ``auto`` finds the choice
    measured on this model: the name LongReach loaded it by (an embedded name such as
    ``smollm2-135m``, a ``.gguf`` file), kept in the config and in any copy saved from it, else
    where transformers loaded it from (``config._name_or_path``).

    Example:
        >>> from types import SimpleNamespace
        >>> model_identity(SimpleNamespace(_name_or_path="/tmp/x", longreach_model="smollm2-135m"))
        'smollm2-135m'
        >>> model_identity(SimpleNamespace(_name_or_path="HuggingFaceTB/SmolLM2-135M"))
        'HuggingFaceTB/SmolLM2-135M'
        >>> model_identity(SimpleNamespace()) is None
        True
    """
    return getattr(config, MODEL_NAME_KEY, None) or getattr(config, "_name_or_path", None) or None


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
