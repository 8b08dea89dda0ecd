"""What calls with the same positions share: the layers of one forward attend at the same
positions, so each part's key spans and rotation angles are computed by the first layer and
reused by the rest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import torch

from longreach.methods.base import Part

T = TypeVar("T")


class Spans(NamedTuple):
    """A part's region for each query as key indices [lo, hi), with what tiling needs: per query,
    how many times each bound has stepped by other than one key since the first query (so a bound
    advances by exactly one key per query between two queries where these counts are equal), and
    the queries where a bound steps by more than a ragged edge should hold (chunk boundaries)."""

    lo: list[int]
    hi: list[int]
    lo_breaks: list[int]
    hi_breaks: list[int]
    cuts: list[int]


def remember(table: dict, key, make: Callable[[], T]) -> T:
    """``table[key]``, made by ``make()`` on first use."""
    if key not in table:
        table[key] = make()
    return table[key]


@dataclass
class PositionMemo:
    """Derived from positions alone, for one set of query and key positions and one rotary layout.

    Example:
        >>> memo = PositionMemo()
        >>> remember(memo.query_angles, "part", lambda: 1) + remember(memo.query_angles, "part", lambda: 2)
        2
    """

    spans: dict[Part, Spans | None] = field(default_factory=dict)
    query_angles: dict[Part, torch.Tensor] = field(default_factory=dict)
    key_angles: dict[tuple[Part, int, int], torch.Tensor] = field(default_factory=dict)
    #: InfLLM: per execution block (start, stop, blocks_end, held keys), the memory part's memo
    execution_blocks: dict[tuple[int, int, int, int], PositionMemo] = field(default_factory=dict)
    #: InfLLM: the memory part of this memo's execution block, made once so that the spans above
    #: are found by every layer
    memory_part: Part | None = None
    #: InfLLM: rotations of this memo's queries to the position blocks are ranked from, and to the
    #: one they are read from (None: their own), and of the retrieved keys from position 0
    ranking_query_angles: tuple[torch.Tensor, torch.Tensor] | None = None
    block_query_angles: tuple[torch.Tensor, torch.Tensor] | None = None
    block_key_angles: tuple[torch.Tensor, torch.Tensor] | None = None
    #: InfLLM decoding: per (position, blocks_end, held keys), the resident spans and angles
    one_query: dict[tuple[int, int, int], tuple] = field(default_factory=dict)
