"""The evaluation suite's common interface: a task makes prompts of an exact token length and
scores the model's answers to them.

Every task builds its prompts as token ids with the model's own tokenizer, so a sample of length
``L`` is exactly ``L`` tokens; nothing is downloaded. ``build_tasks`` turns the names a user gives
(``passkey``, ``niah``, ``niah-text``, ``ruler``, ``ruler:vt``, ...) into task objects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from longreach.eval.haystack import check_texts
from longreach.eval.passkey import (
    FILLER,
    PASSKEY_NEW_TOKENS,
    PROMPT_VERSION,
    passkey_key,
    passkey_prompt,
    score_answer,
)

#: The needle depths of passkey, niah and niah-text unless told otherwise: every command's default.
DEFAULT_DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
#: The version of a task's prompts where it is not 1. Bump it whenever a task's prompts change,
#: so that cells recorded with the older prompts are measured again, not reused or reported.
#: passkey 2: running text (before, pieces tokenized alone); niah-text 2: a repeated text joins
#: as running text (prompts of texts longer than the prompt are unchanged).
PROMPT_VERSIONS = {"passkey": PROMPT_VERSION, "niah-text": 2}


def prompt_version(task: str) -> int:
    """The version of the prompts ``task`` builds now.

    Example:
        >>> prompt_version("passkey"), prompt_version("ruler:vt")
        (2, 1)
    """
    return PROMPT_VERSIONS.get(task, 1)


def current_prompts(record: dict) -> bool:
    """Whether a recorded cell was asked with the prompts its task builds now (records from
    before versions were recorded are version 1)."""
    return record.get("prompt_version", 1) == prompt_version(record["task"])


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


@dataclass(frozen=True)
class PasskeyTask:
    """Passkey retrieval (``longreach.eval.passkey``) as a task: the landmark-attention prompt,
    ``count`` samples per depth, scored by exact match of the first number. ``filler`` replaces
    the classic filler sentences (its cells are recorded with a ``variant`` naming its digest).

    Example:
        >>> task = PasskeyTask(depths=(0.5,))
        >>> [s.expected for s in task.samples(tokenizer, 4096, 2, seed=0)]  # doctest: +SKIP
        [('55761',), ('16388',)]
    """

    depths: tuple[float, ...] = DEFAULT_DEPTHS
    name: str = "passkey"
    filler: str = FILLER

    @property
    def variant(self) -> str | None:
        """None for the classic filler, else ``filler:`` and the first 12 hex digits of its sha256.

        Example:
            >>> PasskeyTask().variant is None, PasskeyTask(filler="It rained.").variant
            (True, 'filler:8b38b558e4df')
        """
        if self.filler == FILLER:
            return None
        return "filler:" + hashlib.sha256(self.filler.encode()).hexdigest()[:12]

    def samples(self, tokenizer, length: int, count: int, seed: int) -> list[Sample]:
        check_count(count)
        samples = []
        for depth in self.depths:
            for index in range(count):
                key = passkey_key(seed, length, float(depth), index)
                ids = passkey_prompt(tokenizer, length, float(depth), key, self.filler)
                samples.append(Sample(self.name, length, float(depth), index, ids, (key,), PASSKEY_NEW_TOKENS))
        return samples

    def score(self, sample: Sample, answer: str) -> float:
        return float(score_answer(answer, sample.expected[0]))


def build_tasks(
    names: Sequence[str], *, texts: Sequence[Path] = (), depths: Sequence[float] = DEFAULT_DEPTHS
) -> list[Task]:
    """The task objects for the names a user gave, in order and without repeats.

    ``ruler`` stands for every RULER task (``ruler:niah_single_1``, ... ``ruler:fwe``);
    ``niah-text`` takes its haystack from ``texts`` (by default the novel LongReach ships,
    ``longreach.data.DEFAULT_TEXT``). ``depths`` is the needle depth grid of ``passkey``,
    ``niah`` and ``niah-text``.

    Example:
        >>> [t.name for t in build_tasks(["passkey", "ruler:vt"])]
        ['passkey', 'ruler:vt']
        >>> build_tasks(["needle"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown task 'needle'; known tasks: passkey, niah, niah-text, ruler, ruler:niah_single_1, ...
    """
    # Imported here: niah and ruler build their samples with Sample from this module.
    from longreach.data import DEFAULT_TEXT
    from longreach.eval.niah import NiahTask
    from longreach.eval.ruler import RULER_TASKS

    depths = tuple(float(d) for d in depths)
    if not depths:
        raise ValueError("give at least one needle depth")
    for depth in depths:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"needle depths must be within [0, 1], got {depth}")
    if not names:
        raise ValueError(f"no task given; known tasks: {', '.join(known_task_names())}")
    tasks: dict[str, Task] = {}
    for raw in names:
        name = raw.strip()
        if name == "passkey":
            tasks[name] = PasskeyTask(depths=depths)
        elif name == "niah":
            tasks[name] = NiahTask(name, depths=depths)
        elif name == "niah-text":
            tasks[name] = NiahTask(name, depths=depths, texts=check_texts(texts or [DEFAULT_TEXT]))
        elif name == "ruler":
            tasks.update((task.name, task) for task in RULER_TASKS.values())
        elif name.startswith("ruler:"):
            task = RULER_TASKS.get(name.removeprefix("ruler:"))
            if task is None:
                known = ", ".join(f"ruler:{n}" for n in RULER_TASKS)
                raise ValueError(f"unknown RULER task {name!r}; known: {known} (or ruler for all of them)")
            tasks[name] = task
        else:
            raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(known_task_names())}")
    return list(tasks.values())


def known_task_names() -> list[str]:
    """Every name ``build_tasks`` accepts.

    Example:
        >>> known_task_names()[:4]
        ['passkey', 'niah', 'niah-text', 'ruler']
    """
    from longreach.eval.ruler import RULER_TASKS

    return ["passkey", "niah", "niah-text", "ruler", *(f"ruler:{n}" for n in RULER_TASKS)]
