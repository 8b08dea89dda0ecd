"""The tasks by name: ``build_tasks`` turns the names a user gives (``passkey``, ``niah``,
``niah-text``, ``ruler``, ``ruler:vt``, ...) into task objects, and the prompt versions say which
recorded cells were asked with the prompts the tasks build now."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from longreach.data import DEFAULT_TEXT
from longreach.eval.haystack import check_texts
from longreach.eval.natural import NaturalNeedleTask
from longreach.eval.niah import NiahTask
from longreach.eval.passkey import PROMPT_VERSION, PasskeyTask
from longreach.eval.ruler import RULER_TASKS
from longreach.eval.task import DEFAULT_DEPTHS, Task

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


def build_tasks(
    names: Sequence[str], *, texts: Sequence[Path] = (), depths: Sequence[float] = DEFAULT_DEPTHS
) -> list[Task]:
    """The task objects for the names a user gave, in order and without repeats.

    ``ruler`` stands for every RULER task (``ruler:niah_single_1``, ... ``ruler:fwe``);
    ``niah-text`` and ``niah-natural`` take their haystack from ``texts`` (by default the novel
    LongReach ships, ``longreach.data.DEFAULT_TEXT``). ``depths`` is the needle depth grid of ``passkey``,
    ``niah`` and ``niah-text``.

    Example:
        >>> [t.name for t in build_tasks(["passkey", "ruler:vt"])]
        ['passkey', 'ruler:vt']
        >>> build_tasks(["needle"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown task 'needle'; known tasks: passkey, niah, niah-text, niah-natural, ruler, ...
    """
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
        elif name == "niah-natural":
            tasks[name] = NaturalNeedleTask(depths=depths, texts=check_texts(texts or [DEFAULT_TEXT]))
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
        >>> known_task_names()[:5]
        ['passkey', 'niah', 'niah-text', 'niah-natural', 'ruler']
    """
    return ["passkey", "niah", "niah-text", "niah-natural", "ruler", *(f"ruler:{n}" for n in RULER_TASKS)]
