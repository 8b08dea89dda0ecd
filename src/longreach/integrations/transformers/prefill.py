"""Reading a long input into the cache in chunks, so activations never exceed one chunk."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import DynamicCache, PreTrainedModel

from longreach.integrations.transformers.forward_args import cache_kwargs
from longreach.integrations.transformers.install import current_method

#: Tokens per forward call when the method names none.
DEFAULT_CHUNK = 1024


def chunk_size_for(model: PreTrainedModel, chunk_size: int | None = None) -> int:
    """``chunk_size``, or the one the model's method needs (InfLLM's execution block), or
    :data:`DEFAULT_CHUNK`."""
    if chunk_size is None:
        method = current_method(model)
        chunk_size = (method.prefill_chunk if method is not None else None) or DEFAULT_CHUNK
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    return chunk_size


def forward_in_chunks(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    cache: DynamicCache,
    *,
    stop: int | None = None,
    chunk_size: int | None = None,
    attention_mask: torch.Tensor | None = None,
    logits_to_keep: int = 1,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Run ``model`` over ``input_ids[:, cache length : stop]``, ``chunk_size`` tokens per call
    through ``cache``; yields ``(start, stop, logits)`` per call, logits of its last
    ``logits_to_keep`` positions (0: all). Chunks are aligned to the sequence start, as
    ``generate()`` aligns its own prefill chunks. The one loop behind :func:`prefill` and
    perplexity.

    Example:
        >>> cache = DynamicCache(config=model.config)  # doctest: +SKIP
        >>> for start, stop, logits in forward_in_chunks(model, ids, cache, logits_to_keep=0): ...  # doctest: +SKIP
    """
    chunk_size = chunk_size_for(model, chunk_size)
    stop = input_ids.shape[1] if stop is None else stop
    cache_argument = cache_kwargs(model, cache)
    with torch.no_grad():
        for a in range(cache.get_seq_length(), stop, chunk_size):
            b = min(a - a % chunk_size + chunk_size, stop)
            mask = attention_mask[:, :b].to(model.device) if attention_mask is not None else None
            position_ids = None
            if mask is not None:  # left padding: positions count real tokens only
                position_ids = (mask.long().cumsum(-1) - 1).clamp_min(0)[:, a:b]
            output = model(
                input_ids[:, a:b].to(model.device),
                attention_mask=mask,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=logits_to_keep,
                **cache_argument,
            )
            yield a, b, output.logits


def prefill(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    cache: DynamicCache | None = None,
    show_progress: bool = True,
) -> DynamicCache:
    """Read ``input_ids`` (B, n) into a cache, ``chunk_size`` tokens per forward call (InfLLM's
    ``exec_block`` when the model is extended with it), with a progress bar; returns the cache.

    Whole chunks are read up to the last one that leaves at least one token:
    ``model.generate(input_ids, cache=cache)`` (``past_key_values=cache`` before transformers
    5.24) then reads the rest (1 to ``chunk_size`` tokens) and continues, exactly as if it had
    read the prompt itself. A 256k-token input never needs activations for more than one chunk.
    ``cache`` continues one that already holds the input's first tokens.

    Example:
        >>> longreach.extend(model, longreach.InfLLM.for_model(8192))  # doctest: +SKIP
        >>> cache = longreach.prefill(model, ids)  # doctest: +SKIP
        >>> model.generate(ids, cache=cache, max_new_tokens=32)  # doctest: +SKIP
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"prefill takes input_ids of shape (batch, n) with n >= 2, got {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids {tuple(input_ids.shape)}"
        )
    chunk_size = chunk_size_for(model, chunk_size)
    cache = cache if cache is not None else DynamicCache(config=model.config)
    start = cache.get_seq_length()
    if start >= input_ids.shape[1]:
        raise ValueError(f"the cache already holds {start} tokens, the whole {input_ids.shape[1]}-token input")
    stop = max(start, (input_ids.shape[1] - 1) // chunk_size * chunk_size)
    columns = (TextColumn("prefill"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress, transient=True) as progress:
        task = progress.add_task("prefill", total=stop - start)
        chunks = forward_in_chunks(
            model, input_ids, cache, stop=stop, chunk_size=chunk_size, attention_mask=attention_mask
        )
        for a, b, _ in chunks:
            progress.advance(task, b - a)
    return cache
