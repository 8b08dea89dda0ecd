"""Passkey retrieval: a random number hidden at a chosen depth of filler text.

The prompt is built to the exact requested token length with the model's own tokenizer; the
score is an exact match of the first number the model answers with. Every finished sample is
appended to a JSON lines file as soon as it is known, and a rerun skips what is already there.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from longreach.eval.haystack import NOISE, SENTENCE_ENDS, noise_haystack
from longreach.eval.records import append_record, read_records, same_settings

INTRO = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about the important information there."
)
FILLER = NOISE
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
DEFAULT_DEPTHS = (0.1, 0.5, 0.9)
#: Bumped whenever the prompts change, so that results recorded with other prompts are not reused.
#: 1: pieces tokenized alone (a filler sentence's trailing space its own token, the needle inline);
#: 2: the reference test's lines, tokenized as running text.
PROMPT_VERSION = 2
#: Tokens generated per answer: a 5-digit key and a little more.
PASSKEY_NEW_TOKENS = 8


@dataclass(frozen=True)
class PasskeyResult:
    """One scored sample; ``method`` is the spec the user gave (e.g. ``self-extend:auto``),
    ``settings`` the full spec it ran with at this length."""

    model: str
    method: str
    length: int
    depth: float
    sample: int
    seed: int
    key: str
    answer: str
    correct: bool
    seconds: float
    settings: str = ""
    prompt_version: int = PROMPT_VERSION

    @property
    def cell(self) -> tuple[str, int, float, int]:
        return (self.method, self.length, self.depth, self.sample)


def passkey_prompt(tokenizer, length: int, depth: float, key: str, filler: str = FILLER) -> list[int]:
    """Token ids of exactly ``length`` tokens, laid out as landmark attention's passkey test (the
    one most papers reuse): the task, the filler up to the needle, the needle on a line of its
    own, the filler again from its start, the question, one per line. The
    needle's line starts at ``depth`` of the filler, moved back to the nearest sentence end. The
    ids are what the prompt's own text tokenizes to.

    Example:
        >>> ids = passkey_prompt(tokenizer, 4096, 0.5, "48213")  # doctest: +SKIP
        >>> len(ids)  # doctest: +SKIP
        4096
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be within [0, 1], got {depth}")
    if not filler.strip():
        raise ValueError("filler text must not be empty")
    # Each piece with the newline that joins it to the next, as it tokenizes in the whole text.
    head = tokenizer(INTRO + "\n", add_special_tokens=True).input_ids
    needle = tokenizer("\n" + NEEDLE.format(key=key) + "\n", add_special_tokens=False).input_ids
    question = tokenizer("\n" + QUESTION, add_special_tokens=False).input_ids
    budget = length - len(head) - len(needle) - len(question)
    if budget < 0:
        raise ValueError(f"a passkey prompt needs at least {length - budget} tokens, {length} were asked for")
    first = tokenizer(filler.strip(), add_special_tokens=False).input_ids
    stream = first + noise_haystack(tokenizer, max(0, budget - len(first)), filler)
    before = round(depth * budget)
    floor = max(0, before - len(first))
    while before > floor and not tokenizer.decode([stream[before - 1]]).rstrip().endswith(SENTENCE_ENDS):
        before -= 1
    return head + stream[:before] + needle + stream[: budget - before] + question


def score_answer(answer: str, key: str) -> bool:
    """True when the first number in ``answer`` is exactly ``key``."""
    found = re.search(r"\d+", answer)
    return found is not None and found.group(0) == key


def greedy_answer(model, tokenizer, ids: list[int], max_new_tokens: int) -> str:
    """The model's greedy continuation of the prompt ``ids``, decoded and stripped: how every
    task of the suite asks its question.

    Example:
        >>> greedy_answer(model, tokenizer, passkey_prompt(tokenizer, 4096, 0.5, "48213"), 8)  # doctest: +SKIP
        '48213. Remember'
    """
    prompt = torch.tensor([ids], device=model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        generated = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    return tokenizer.decode(generated[0, len(ids) :], skip_special_tokens=True).strip()


def passkey_key(seed: int, length: int, depth: float, sample: int) -> str:
    """The deterministic 5-digit key of one sample."""
    return str(random.Random(f"{seed}:{length}:{depth}:{sample}").randint(10000, 99999))


def read_results(
    path: Path, *, model: str | None = None, seed: int | None = None, prompt_version: int | None = PROMPT_VERSION
) -> list[PasskeyResult]:
    """Results already written to a JSON lines file (a torn last line is ignored), only those of
    ``model`` and ``seed`` when given: a folder may hold other runs. Only results asked with the
    prompts built now are read, unless ``prompt_version`` says which (None: all).
    """
    results = []
    for record in read_records(path):
        try:
            result = PasskeyResult(**{"prompt_version": 1, **record})  # unversioned records predate version 2
        except TypeError:
            continue
        if (
            (model is None or result.model == model)
            and (seed is None or result.seed == seed)
            and (prompt_version is None or result.prompt_version == prompt_version)
        ):
            results.append(result)
    return results


def run_passkey(
    model,
    tokenizer,
    *,
    method: str,
    lengths: Sequence[int],
    depths: Sequence[float] = DEFAULT_DEPTHS,
    samples: int = 1,
    seed: int = 0,
    filler: str = FILLER,
    model_name: str = "",
    out: Path | None = None,
    on_result: Callable[[PasskeyResult], None] | None = None,
    max_new_tokens: int = PASSKEY_NEW_TOKENS,
    settings: str = "",
) -> list[PasskeyResult]:
    """Score the model (as it is, extended or not) on passkey retrieval.

    ``method`` labels the results (use ``Method.spec()``, or the user's ``NAME:auto``, with the
    resolved spec as ``settings``). With ``out`` (a ``.jsonl`` file),
    finished samples are appended as they complete and samples already in it with the same
    ``settings`` and prompts are skipped (a ``NAME:auto`` that now resolves otherwise, or a
    sample recorded with an older prompt version, runs again).

    Example:
        >>> longreach.extend(model, longreach.SelfExtend(4, 1024))  # doctest: +SKIP
        >>> run_passkey(model, tokenizer, method="self-extend:group_size=4,window=1024",
        ...             lengths=[16384], samples=2)  # doctest: +SKIP
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    done = {r.cell: r for r in read_results(out, model=model_name, seed=seed)} if out is not None else {}
    results = []
    for length, depth, sample in _grid(lengths, depths, samples):
        previous = done.get((method, length, depth, sample))
        if previous is not None and same_settings(previous.settings, settings):
            results.append(previous)
            if on_result:
                on_result(previous)
            continue
        key = passkey_key(seed, length, depth, sample)
        ids = passkey_prompt(tokenizer, length, depth, key, filler)
        started = time.perf_counter()
        answer = greedy_answer(model, tokenizer, ids, max_new_tokens)
        result = PasskeyResult(
            model=model_name,
            method=method,
            length=length,
            depth=depth,
            sample=sample,
            seed=seed,
            key=key,
            answer=answer,
            correct=score_answer(answer, key),
            seconds=round(time.perf_counter() - started, 3),
            settings=settings or method,
        )
        if out is not None:
            append_record(out, asdict(result))
        results.append(result)
        if on_result:
            on_result(result)
    return results


def _grid(lengths: Iterable[int], depths: Iterable[float], samples: int):
    for length in lengths:
        for depth in depths:
            for sample in range(samples):
                yield length, float(depth), sample


def accuracy_table(results: Iterable[PasskeyResult]) -> dict[str, dict[int, tuple[int, int]]]:
    """{method: {length: (correct, total)}}; a sample recorded twice counts once (the last)."""
    latest = {(r.model, r.seed, *r.cell): r for r in results}
    table: dict[str, dict[int, tuple[int, int]]] = {}
    for r in latest.values():
        correct, total = table.setdefault(r.method, {}).get(r.length, (0, 0))
        table[r.method][r.length] = (correct + int(r.correct), total + 1)
    return table
