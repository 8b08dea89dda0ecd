"""The evaluation suite's common interface: a task makes prompts of an exact token length and
scores the model's answers to them.

Every task builds its prompts as token ids with the model's own tokenizer, so a sample of length
``L`` is exactly ``L`` tokens; nothing is downloaded. The tasks themselves live in ``passkey``,
``niah`` and ``ruler``; ``tasks`` turns the names a user gives into task objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: The needle depths of passkey, niah and niah-text unless told otherwise: every command's default.
DEFAULT_DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class Sample:
    """One prompt of a task and what its answer must contain."""

    task: str  # task name, e.g. "niah", "niah-text", "passkey", "ruler:vt"
    length: int  # == len(prompt_ids), exactly the requested length
    depth: float | None  # fraction of the haystack where the (first) needle starts; None where meaningless
    index: int  # sample number for this (task, length, depth)
    prompt_ids: list[int]
    expected: tuple[str, ...]  # strings the answer must contain
    max_new_tokens: int
    haystack: str | None = None  # the text file this prompt's haystack came from, where a task has several

    def __post_init__(self):
        if len(self.prompt_ids) != self.length:
            raise ValueError(f"{self.task} sample has {len(self.prompt_ids)} prompt tokens, not {self.length}")


@runtime_checkable
class Task(Protocol):
    """What every evaluation task provides.

    A task may also have a ``variant`` (a string, or None): what else its prompts depend on, such
    as passkey's filler text. It is recorded with each cell, and a cell recorded with another
    variant is asked again, not reused.
    """

    name: str

    def samples(self, tokenizer, length: int, count: int, seed: int) -> list[Sample]:
        """Deterministic samples of exactly ``length`` tokens."""
        ...

    def score(self, sample: Sample, answer: str) -> float:
        """How right ``answer`` is, in [0, 1]."""
        ...


def string_match_all(answer: str, expected: Sequence[str]) -> float:
    """Fraction of the expected strings found in the answer, ignoring case (RULER's metric).

    Example:
        >>> string_match_all("The numbers are 123 and 456.", ["123", "456", "789"])
        0.6666666666666666
        >>> string_match_all("ABCDE, fghij", ("abcde", "FGHIJ"))
        1.0
    """
    if not expected:
        raise ValueError("string_match_all needs at least one expected string")
    found = answer.lower()
    return sum(e.lower() in found for e in expected) / len(expected)


def check_count(count: int) -> None:
    """Raise a clear error unless ``count`` is a usable number of samples."""
    if count < 1:
        raise ValueError(f"the number of samples must be >= 1, got {count}")
