"""Appending tokens to, and dropping a run of tokens from, a (..., n, d) tensor without copying
what it holds.

``torch.cat`` copies all n held tokens to add one, so a decoding step that appends to every
layer's keys and values costs O(n) memory traffic per token, about twice what attending to them
costs. Here the held tokens are a view of a larger buffer with spare room: appending writes the
new tokens in place and returns a longer view; only when the room runs out is everything
copied, into a buffer with ``SPARE`` more room, so the copying per token is O(1) amortised.
Dropping a run near the front (a sliding window's oldest token, after a few kept first tokens)
moves the few tokens before the run instead of the many after it.
"""

from __future__ import annotations

import torch

#: Room added when a buffer is full, as a fraction of the tokens it then holds.
SPARE = 0.125
#: Marks the buffers made here: only those are ever written in place, never a tensor of the user's.
_OWNED = "_longreach_append_buffer"
#: The buffer behind a view returned here. Under ``torch.inference_mode`` (vLLM's) views do not
#: record their base, so the views handed out carry it themselves.
_BUFFER = "_longreach_buffer"


def _handed_out(buffer: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    setattr(view, _BUFFER, buffer)
    return view


def _owned_view(held: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """(buffer, offset) when ``held`` is tokens [offset, offset + n) of a buffer made here."""
    buffer = getattr(held, _BUFFER, None)
    if buffer is None:
        buffer = held._base
    if (
        buffer is None
        or not getattr(buffer, _OWNED, False)
        or buffer.shape[:-2] != held.shape[:-2]
        or buffer.shape[-1] != held.shape[-1]
        or buffer.stride() != held.stride()
        or buffer.untyped_storage().data_ptr() != held.untyped_storage().data_ptr()
    ):
        return None
    offset, rest = divmod(held.data_ptr() - buffer.data_ptr(), buffer.stride(-2) * buffer.element_size())
    if rest or offset < 0 or offset + held.shape[-2] > buffer.shape[-2]:
        return None
    return buffer, offset


def _tracks_gradients(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def append_tokens(held: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``held`` (..., n, d) followed by ``new`` (..., m, d), as a view of a buffer with room to grow.

    The result is ``torch.cat((held, new), dim=-2)`` in value. When ``held`` is a view of a
    buffer an earlier call made, ``new`` is written into that buffer after it: do not keep views
    of positions past ``n`` (say, from before a crop) and expect them unchanged.

    Example:
        >>> a = append_tokens(torch.zeros(1, 2, 3, 4), torch.ones(1, 2, 1, 4))
        >>> b = append_tokens(a, torch.ones(1, 2, 1, 4))
        >>> b.shape, b.data_ptr() == a.data_ptr()
        (torch.Size([1, 2, 5, 4]), True)
    """
    if _tracks_gradients(held, new):
        return torch.cat((held, new), dim=-2)  # in-place writes would break the autograd graph
    n, m = held.shape[-2], new.shape[-2]
    owned = _owned_view(held)
    if owned is not None and owned[1] + n + m <= owned[0].shape[-2]:
        buffer, offset = owned
        buffer[..., offset + n : offset + n + m, :] = new
        return _handed_out(buffer, buffer[..., offset : offset + n + m, :])
    capacity = n + m + max(1, int((n + m) * SPARE))
    buffer = held.new_empty((*held.shape[:-2], capacity, held.shape[-1]))
    setattr(buffer, _OWNED, True)
    buffer[..., :n, :] = held
    buffer[..., n : n + m, :] = new
    return _handed_out(buffer, buffer[..., : n + m, :])


def can_drop_in_place(held: torch.Tensor, start: int, stop: int) -> bool:
    """Whether :func:`drop_run` may drop tokens [start, stop) of ``held``: it is a buffer made
    here, moving the ``start`` tokens before the run is cheaper than copying those after it, and
    what remains still fills at least half the buffer (a view must not pin a mostly dead one)."""
    owned = _owned_view(held)
    remaining = held.shape[-2] - (stop - start)
    return (
        owned is not None
        and start < held.shape[-2] - stop
        and 2 * remaining >= owned[0].shape[-2]
        and not _tracks_gradients(held)
    )


def drop_run(held: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """``held`` without tokens [start, stop), made in place by moving the ``start`` tokens
    before the run up to it; only where :func:`can_drop_in_place` says so.

    Example:
        >>> held = append_tokens(torch.arange(6.0).view(1, 1, 6, 1), torch.zeros(1, 1, 1, 1))
        >>> can_drop_in_place(held, 2, 4), drop_run(held, 2, 4).flatten().tolist()
        (True, [0.0, 1.0, 4.0, 5.0, 0.0])
    """
    if not can_drop_in_place(held, start, stop):
        raise ValueError(f"tokens [{start}, {stop}) of this tensor cannot be dropped in place")
    buffer = _owned_view(held)[0]
    if start:
        held[..., stop - start : stop, :] = held[..., :start, :].clone()
    return _handed_out(buffer, held[..., stop - start :, :])
