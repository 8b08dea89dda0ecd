"""Which keys a plan will never attend to again: eviction derived from the plan, not declared.

For the next query position ``p``, each part's keys from ``lo(p)`` to ``hi(far future)`` can still
be seen. A plan whose spans leave a gap for large ``p`` (LM-Infinite, StreamingLLM: the first
tokens and a recent window) evicts; a cache then keeps only what :func:`still_visible` says.
"""

from __future__ import annotations

import torch

from longreach.methods.base import Part, retained_spans

#: A position far enough in that every plan's eventual gaps have opened.
_LATE_POSITION = 1 << 20


def evicts(parts: tuple[Part, ...]) -> bool:
    """Whether later queries stop seeing some keys for good (LM-Infinite, StreamingLLM).

    Example:
        >>> from longreach.methods import SelfExtend, StreamingLLM
        >>> evicts(SelfExtend(group_size=4, window=64).parts()), evicts(StreamingLLM(n_sink=4, window=64).parts())
        (False, True)
    """
    covered = 0
    for lo, hi in sorted(retained_spans(parts, torch.tensor(_LATE_POSITION))):
        if lo > covered:
            return True
        covered = max(covered, hi)
    return covered < _LATE_POSITION


def still_visible(parts: tuple[Part, ...], token_index: torch.Tensor, total: int, offsets: set[int]) -> torch.Tensor:
    """Which keys (their indices in the sequence, ``token_index``) some later query of some row can
    still attend to, after ``total`` tokens; a row's key positions are its indices minus its
    ``offset`` (left padding)."""
    kept = torch.zeros(token_index.shape, dtype=torch.bool, device=token_index.device)
    for offset in offsets:
        positions = token_index - offset
        for lo, hi in retained_spans(parts, torch.tensor(total - offset)):
            kept |= (positions >= lo) & (positions < hi)
    return kept
