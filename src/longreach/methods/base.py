"""A method is a position plan: disjoint parts of the causal (query, key) plane, each with the
RoPE positions its queries and keys are rotated to.

Every part's region is, for each query position i, one contiguous span of key positions
[lo(i), hi(i)) with lo and hi non-decreasing in i. That holds for every method in scope (bands in
i - j, blocks in chunk space, leading sink tokens) and is what lets the engine walk query tiles and
touch only the keys a part can see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

Positions = Callable[[torch.Tensor], torch.Tensor]
KeySpan = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Part:
    """One region of the causal plane and the positions used inside it.

    ``key_span(i)`` gives, per true query position ``i`` (int64), the key positions
    ``[lo, hi)`` of the region. ``query_position(i)`` and ``key_position(j)`` give the positions
    to rotate to (int64 or float); ``None`` keeps the true position.

    Example:
        >>> neighbours = Part("neighbour", key_span=lambda i: (i - 63, i + 1))
    """

    name: str
    key_span: KeySpan
    query_position: Positions | None = None
    key_position: Positions | None = None


class InputTooLongError(ValueError):
    """The input is longer than the chosen settings can cover on this model."""


class Method:
    """Base of every method config. Subclasses are frozen dataclasses validated on creation."""

    #: name used on the command line (``--method NAME:key=value``)
    cli_name: str = ""

    def parts(self) -> tuple[Part, ...]:
        raise NotImplementedError

    def max_length(self, trained_length: int) -> int | None:
        """Longest input (tokens) these settings cover on a model trained to ``trained_length``;
        ``None`` when there is no limit."""
        return None

    def suggest(self, length: int, trained_length: int) -> Method | None:
        """Settings of the same method that would cover ``length`` tokens, if any."""
        return None

    def spec(self) -> str:
        """The CLI spec that recreates this config, e.g. ``self-extend:group_size=4,window=1024``."""
        values = ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))  # type: ignore[arg-type]
        return f"{self.cli_name}:{values}" if values else self.cli_name


def check_int(owner: str, name: str, value: object, minimum: int) -> None:
    """Raise a clear error unless ``value`` is an int (not bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
