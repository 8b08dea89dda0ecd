"""Loss by position on a long text: does the model still predict well far past its trained length?

The text is tokenized once; for an input of L tokens the model reads the first L tokens through
its cache in chunks (the chunked prefill of ``forward_in_chunks``, so logits never exceed one
chunk) and the loss of every next-token prediction is kept. By causality the first n losses of
an L-token input are those of an n-token input read with the same settings, so one run at the
longest length answers every shorter one (``longreach.eval.compare.plan`` shares runs that way).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from transformers import DynamicCache

from longreach.integrations.transformers.prefill import forward_in_chunks

#: Positions per bucket of the loss-by-position curve.
BUCKET = 1024


def token_losses(
    model, ids: torch.Tensor, chunk_size: int | None = None, on_chunk: Callable[[int], None] | None = None
) -> torch.Tensor:
    """Negative log-likelihood (float64, nats) of each of ids[1:] given what precedes it, read
    ``chunk_size`` tokens per forward call (by default the method's prefill chunk, or 1024).

    Example:
        >>> losses = token_losses(model, tokenizer(text, return_tensors="pt").input_ids)  # doctest: +SKIP
    """
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] < 2:
        raise ValueError(f"token_losses takes one sequence of shape (1, n >= 2), got {tuple(ids.shape)}")
    cache = DynamicCache(config=model.config)
    losses = []
    for start, stop, logits in forward_in_chunks(
        model, ids, cache, stop=ids.shape[1] - 1, chunk_size=chunk_size, logits_to_keep=0
    ):
        targets = ids[0, start + 1 : stop + 1].to(logits.device)
        log_probs = torch.log_softmax(logits[0].float(), dim=-1)
        losses.append(-log_probs.gather(1, targets[:, None]).squeeze(1).double().cpu())
        if on_chunk:
            on_chunk(stop - start)
    return torch.cat(losses)


def perplexity(losses: torch.Tensor) -> float:
    """exp of the mean loss."""
    return math.exp(float(losses.mean()))


def bucket_losses(losses: torch.Tensor, bucket: int = BUCKET) -> list[float]:
    """Mean loss of each run of ``bucket`` consecutive predictions.

    Example:
        >>> bucket_losses(torch.tensor([1.0, 3.0, 5.0]), bucket=2)
        [2.0, 5.0]
    """
    return [float(losses[i : i + bucket].mean()) for i in range(0, losses.numel(), bucket)]


def bucket_perplexity(losses: torch.Tensor, bucket: int = BUCKET) -> list[float]:
    """Perplexity of each run of ``bucket`` consecutive predictions.

    Example:
        >>> bucket_perplexity(torch.zeros(5), bucket=2)
        [1.0, 1.0, 1.0]
    """
    return [math.exp(loss) for loss in bucket_losses(losses, bucket)]
