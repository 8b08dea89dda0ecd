"""Passkey retrieval: a random number hidden at a chosen depth of filler text.

The prompt is built to the exact requested token length with the model's own tokenizer; the
score is an exact match of the first number the model answers with. The task that asks it is
:class:`PasskeyTask`, run like every task by ``longreach.eval.compare``.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

import torch

from longreach.eval.haystack import NOISE, SENTENCE_ENDS, noise_haystack
from longreach.eval.task import DEFAULT_DEPTHS, Sample, check_count

INTRO = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about the important information there."
)
FILLER = NOISE
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
#: Bumped whenever the prompts change, so that results recorded with other prompts are not reused.
#: 1: pieces tokenized alone (a filler sentence's trailing space its own token, the needle inline);
#: 2: the reference test's lines, tokenized as running text.
PROMPT_VERSION = 2
#: Tokens generated per answer: a 5-digit key and a little more.
PASSKEY_NEW_TOKENS = 8


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
