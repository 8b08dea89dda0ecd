"""Needles in natural text: a fact written as one more sentence of a book, in one of several
wordings, at a chosen depth of the user's own text, and asked about at the end in plain words.

The synthetic tasks overstate what a reader of real documents gets: a repeated filler makes the
needle the only sentence unlike the rest, and RULER's wording ("special magic number") appears
nowhere else. Here the haystack is running prose (the files given, by default the novel LongReach
ships), the needle is a sentence a novel could hold (a name, an object, a six-digit number), and
sample ``i`` at the ``d``-th depth uses wording ``(d + i) % len(WORDINGS)``: five depths with one
sample each, or one depth with five samples, ask every wording once. With several texts, each
prompt's haystack is one of them, in turn (sample ``i`` at the ``d``-th of ``D`` depths reads text
``(i * D + d) % len(texts)``), so that a cell samples several books rather than the opening of the
first. The number is the answer; the question repeats the needle's words, not its number.
(Inside the embedded model's trained length, wordings about a safe's combination and a debt in
pounds were answered with the question's own words; these five were kept because the model
answers them there.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from longreach.data import DEFAULT_TEXT
from longreach.eval.haystack import check_texts, needle_prompt, text_haystack
from longreach.eval.task import DEFAULT_DEPTHS, Sample, check_count, string_match_all


@dataclass(frozen=True)
class Wording:
    """How one fact is told in the text and asked about at the end ({name}, {value})."""

    needle: str
    question: str
    answer: str


WORDINGS = (
    Wording(
        "The key to {name}'s room at the inn hung on a hook marked with the number {value}.",
        "What number marked the hook of {name}'s room key, according to the text?",
        "According to the text, the hook of {name}'s room key was marked with the number",
    ),
    Wording(
        "On the back of the map {name} had written a single number: {value}.",
        "What number had {name} written on the back of the map, according to the text?",
        "According to the text, the number {name} had written on the back of the map was",
    ),
    Wording(
        "The ticket that {name} kept in a coat pocket bore the number {value}.",
        "What number did the ticket in {name}'s coat pocket bear, according to the text?",
        "According to the text, the ticket in {name}'s coat pocket bore the number",
    ),
    Wording(
        "The letter gave {name}'s new address as number {value} on the harbour road.",
        "At what number on the harbour road was {name}'s new address, according to the text?",
        "According to the text, {name}'s new address was number",
    ),
    Wording(
        "The bank's ledger listed {name}'s account under the number {value}.",
        "Under what number did the bank's ledger list {name}'s account, according to the text?",
        "According to the text, the bank's ledger listed {name}'s account under the number",
    ),
)


@dataclass(frozen=True)
class Fact:
    """One needle: a wording filled with a name and a number, told in ``text``."""

    wording: Wording
    name: str
    value: str
    text: Path

    @property
    def needle(self) -> str:
        return self.wording.needle.format(name=self.name, value=self.value)

    @property
    def question(self) -> str:
        return self.wording.question.format(name=self.name)

    @property
    def answer(self) -> str:
        return self.wording.answer.format(name=self.name)


#: Given names for the needle's person: common, one or two tokens, rare as characters of a novel.
NAMES = (
    "Edith Marlow",
    "Walter Pryce",
    "Agnes Holloway",
    "Felix Dunmore",
    "Clara Whitby",
    "Oscar Penhallow",
    "Mabel Ashdown",
    "Rupert Fenwick",
    "Ida Carrow",
    "Hugo Bramwell",
)
HEAD = "Read the following text carefully. A question about it follows at the end.\n"
# The question, then the start of its answer, which a completion model finishes with the number.
TAIL = "\n{question} {answer}"
#: Enough for a six-digit number and the words around it.
NEW_TOKENS = 24


@dataclass(frozen=True)
class NaturalNeedleTask:
    """``niah-natural``: one fact per prompt, told in one of :data:`WORDINGS` inside one of
    ``texts`` (by default the shipped novel; several are taken in turn), at each depth of the
    grid; ``count`` samples per depth.

    Example:
        >>> task = NaturalNeedleTask(depths=(0.5,))
        >>> samples = task.samples(tokenizer, 8192, 5, seed=0)  # doctest: +SKIP
        >>> [s.expected for s in samples][:2]  # doctest: +SKIP
        [('493017',), ('806211',)]
    """

    name: str = "niah-natural"
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    texts: tuple[Path, ...] = (DEFAULT_TEXT,)
    max_new_tokens: int = NEW_TOKENS

    def __post_init__(self):
        check_texts(self.texts)

    @property
    def variant(self) -> str:
        """The haystack's files: a cell asked in another text is asked again, not reused."""
        return ",".join(Path(p).name for p in self.texts)

    def facts(self, length: int, count: int, seed: int) -> list[tuple[float, int, Fact]]:
        """(depth, sample index, fact) of each prompt of a cell, in the order of :meth:`samples`."""
        check_count(count)
        facts = []
        for position, depth in enumerate(map(float, self.depths)):
            for index in range(count):
                rng = random.Random(f"{self.name}:{seed}:{length}:{depth}:{index}")
                wording = WORDINGS[(position + index) % len(WORDINGS)]
                name, value = rng.choice(NAMES), str(rng.randint(100_000, 999_999))
                # Sample i at the d-th depth reads text (i * depths + d): the first sample of each depth keeps
                # its text when more samples are asked.
                text = self.texts[(index * len(self.depths) + position) % len(self.texts)]
                facts.append((depth, index, Fact(wording, name, value, Path(text))))
        return facts

    def samples(self, tokenizer, length: int, count: int, seed: int) -> list[Sample]:
        return [
            self.sample(tokenizer, length, depth, index, fact) for depth, index, fact in self.facts(length, count, seed)
        ]

    def sample(self, tokenizer, length: int, depth: float, index: int, fact: Fact) -> Sample:
        """The prompt of ``length`` tokens telling ``fact`` at ``depth`` of its text, asked at the end."""
        ids = needle_prompt(
            tokenizer,
            length,
            head=HEAD,
            tail=TAIL.format(question=fact.question, answer=fact.answer),
            needles=[fact.needle],
            depths=[depth],
            haystack=lambda n: text_haystack(tokenizer, [fact.text], n),
            what=self.name,
        )
        return Sample(self.name, length, depth, index, ids, (fact.value,), self.max_new_tokens, fact.text.name)

    def score(self, sample: Sample, answer: str) -> float:
        return string_match_all(answer, sample.expected)
