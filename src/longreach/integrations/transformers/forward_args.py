"""What LongReach's forward pre-hooks read from a model's forward arguments.

transformers 5.24 renamed the forward's KV cache argument from ``past_key_values`` to ``cache``
(the old name still works until 5.40, with a warning); LongReach reads a cache given under
either name and passes its own under the name the installed version takes.
"""

from __future__ import annotations

import inspect

import torch

#: The forward's KV cache argument: its name since transformers 5.24, then its name before.
CACHE_NAMES = ("cache", "past_key_values")


def cache_keyword(forward) -> str:
    """The keyword under which ``forward`` (a model's forward) takes its KV cache.

    Example:
        >>> cache_keyword(lambda input_ids, past_key_values=None: None)
        'past_key_values'
    """
    parameters = inspect.signature(forward).parameters
    return next((name for name in CACHE_NAMES if name in parameters), CACHE_NAMES[-1])


def cache_kwargs(model, cache) -> dict:
    """``cache`` as the keyword argument ``model``'s forward takes it under, to pass as ``**``.

    Example:
        >>> out = model(ids, use_cache=True, **cache_kwargs(model, cache))  # doctest: +SKIP
    """
    return {cache_keyword(model.forward): cache}


def given_cache(kwargs: dict) -> tuple[str | None, object | None]:
    """The keyword a forward call names its cache under (None if it names none) and the cache."""
    name = next((name for name in CACHE_NAMES if name in kwargs), None)
    return name, kwargs.get(name) if name else None


def input_length(args: tuple, kwargs: dict) -> int:
    """How many positions a forward call of the model reads, from the arguments a forward
    pre-hook receives (0 if it names no input)."""
    for given in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), *args[:1]):
        if isinstance(given, torch.Tensor) and given.dim() >= 2:
            return given.shape[1]
    return 0
