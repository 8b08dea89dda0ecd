"""Appending tokens to a (..., n, d) tensor without copying what it holds.

``torch.cat`` copies all n held tokens to add one, so a decoding step that appends to every
layer's keys and values costs O(n) memory traffic per token, about twice what attending to them
costs. Here the held tokens are a prefix view of a larger buffer with spare room: appending
writes the new tokens in place and returns a longer view; only when the room runs out is
everything copied, into a buffer with ``SPARE`` more room, so the copying per token is O(1)
amortised.
"""

from __future__ import annotations

import torch

#: Room added when a buffer is full, as a fraction of the tokens it then holds.
SPARE = 0.125
#: Marks the buffers made here: only those are ever written in place, never a tensor of the user's.
_OWNED = "_longreach_append_buffer"


def append_tokens(held: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``held`` (..., n, d) followed by ``new`` (..., m, d), as a view of a buffer with room to grow.

    The result is ``torch.cat((held, new), dim=-2)`` in value. When ``held`` is a prefix view of
    a buffer an earlier call made, ``new`` is written into that buffer after it: do not keep
    views of positions past ``n`` (say, from before a crop) and expect them unchanged.

    Example:
        >>> a = append_tokens(torch.zeros(1, 2, 3, 4), torch.ones(1, 2, 1, 4))
        >>> b = append_tokens(a, torch.ones(1, 2, 1, 4))
        >>> b.shape, b.data_ptr() == a.data_ptr()
        (torch.Size([1, 2, 5, 4]), True)
    """
    if torch.is_grad_enabled() and (held.requires_grad or new.requires_grad):
        return torch.cat((held, new), dim=-2)  # in-place writes would break the autograd graph
    n, m = held.shape[-2], new.shape[-2]
    buffer = held._base
    if (
        buffer is not None
        and getattr(buffer, _OWNED, False)
        and buffer.shape[:-2] == held.shape[:-2]
        and buffer.shape[-1] == held.shape[-1]
        and buffer.stride() == held.stride()
        and buffer.data_ptr() == held.data_ptr()
        and n + m <= buffer.shape[-2]
    ):
        buffer[..., n : n + m, :] = new
        return buffer[..., : n + m, :]
    capacity = n + m + max(m, int((n + m) * SPARE))
    buffer = held.new_empty((*held.shape[:-2], capacity, held.shape[-1]))
    setattr(buffer, _OWNED, True)
    buffer[..., :n, :] = held
    buffer[..., n : n + m, :] = new
    return buffer[..., : n + m, :]
