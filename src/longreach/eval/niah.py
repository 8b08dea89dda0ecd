"""Needle in a haystack, in RULER's wording: "One of the special magic numbers for {key} is:
{value}." hidden at a chosen depth of noise sentences or of the user's own text files.

Prompts are built by ``longreach.eval.haystack`` (exact token lengths, needles at sentence ends).
Keys are words taken from the tokenizer's own vocabulary, so nothing is downloaded.
"""

from __future__ import annotations

import functools
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from longreach.eval.haystack import NOISE, needle_prompt, noise_haystack, text_haystack
from longreach.eval.task import DEFAULT_DEPTHS, Sample, check_count, string_match_all

#: RULER keeps the plural kind ("numbers", "uuids") in the needle even when there is one.
NEEDLE = "One of the special magic {kind}s for {key} is: {value}."
HEAD_ONE = (
    "A special magic {kind} is hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind} afterwards.\n"
)
# The question and the answer prefix: the prefix makes a completion model answer directly.
TAIL_ONE = (
    "\nWhat is the special magic {kind} for {query} mentioned in the provided text? "
    "The special magic {kind} for {query} mentioned in the provided text is"
)
HEAD_MANY = (
    "Some special magic {kind}s are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind}s afterwards.\n"
)
TAIL_MANY = (
    "\nWhat are all the special magic {kind}s for {query} mentioned in the provided text? "
    "The special magic {kind}s for {query} mentioned in the provided text are"
)
#: Fewest vocabulary words the key and word tasks need to draw from.
MIN_WORDS = 200
#: Enough for a 7-digit number and a few words around it.
NUMBER_NEW_TOKENS = 32
# Words of the fixed wording are never keys: a key like "green" or "number" would be ambiguous.
_WORDING = (NOISE + NEEDLE + HEAD_ONE + TAIL_ONE + HEAD_MANY + TAIL_MANY).format(
    kind="number", key="", value="", query=""
)
# Words of the prompts' own wording would blur the question.
_RESERVED = frozenset(re.findall(r"[a-z]+", _WORDING.lower()))
# Needle keys and word lists end up in published reports: keep distressing words out of them.
_UNSUITABLE = frozenset(
    "abortion abuse assault bomb bombing cancer corpse death dying genocide gun guns kill killer killing murder "
    "murders naked porn rape racism racist slave slavery suicide terror terrorist torture victim violence weapon "
    "weapons".split()
)
_EXCLUDED = _RESERVED | _UNSUITABLE


def magic_number(rng: random.Random) -> str:
    """A random 7-digit number, as RULER's values.

    Example:
        >>> magic_number(random.Random(0))
        '7463343'
    """
    return str(rng.randint(1_000_000, 9_999_999))


def magic_uuid(rng: random.Random) -> str:
    """A random version-4 UUID string.

    Example:
        >>> len(magic_uuid(random.Random(0)))
        36
    """
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@functools.lru_cache(maxsize=8)
def tokenizer_words(tokenizer) -> tuple[str, ...]:
    """Sorted English-looking words the tokenizer has as single tokens with a leading space.

    Words of 4-9 lowercase letters with a vowel, whose token has the word-start marker (``Ġ``
    of byte-level BPE, ``▁`` of SentencePiece). Word pieces such as ``Ġcelebr`` are also such
    tokens; a word is kept only when an inflected form (``+s``, ``+es``, ``+ly``) is a token
    too, which word pieces rarely have.

    Example:
        >>> words = tokenizer_words(tokenizer)  # doctest: +SKIP
        >>> len(words), words[:3]  # doctest: +SKIP
        (3112, ('abnormal', 'abrupt', 'absolute'))
    """
    starts = {token[1:] for token in tokenizer.get_vocab() if token[:1] in ("Ġ", "▁")}

    def is_word(word: str) -> bool:
        if not re.fullmatch(r"[a-z]{4,9}", word) or not re.search(r"[aeiouy]", word) or word in _EXCLUDED:
            return False
        sibilant = word.endswith(("ss", "x", "z", "ch", "sh"))
        return word + "s" in starts or (sibilant and word + "es" in starts) or word + "ly" in starts

    words = tuple(sorted(w for w in starts if is_word(w)))
    if len(words) < MIN_WORDS:
        raise ValueError(
            f"the tokenizer has only {len(words)} single-token lowercase words of 4-9 letters "
            f"(at least {MIN_WORDS} are needed for needle keys and word lists); use a model with a "
            "byte-level BPE or SentencePiece vocabulary"
        )
    return words


def niah_wording(kind: str, query: str, many: bool) -> tuple[str, str]:
    """RULER's (head, tail) for a needle ``kind`` ("number", "uuid"), one answer or several.

    Example:
        >>> head, tail = niah_wording("number", "apple", many=False)
        >>> tail.endswith("The special magic number for apple mentioned in the provided text is")
        True
    """
    head, tail = (HEAD_MANY, TAIL_MANY) if many else (HEAD_ONE, TAIL_ONE)
    return head.format(kind=kind), tail.format(kind=kind, query=query)


@dataclass(frozen=True)
class NiahTask:
    """One needle (a word key with a 7-digit number) at each depth of the grid: in noise
    sentences (``niah``) or in the text files (``niah-text``); ``count`` samples per depth.

    Example:
        >>> task = NiahTask("niah", depths=(0.25, 0.75))
        >>> samples = task.samples(tokenizer, 8192, 3, seed=0)  # doctest: +SKIP
        >>> len(samples), samples[0].expected  # doctest: +SKIP
        (6, ('7377296',))
    """

    name: str = "niah"
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    texts: tuple[Path, ...] = ()
    max_new_tokens: int = NUMBER_NEW_TOKENS

    def __post_init__(self):
        if self.name == "niah-text" and not self.texts:
            raise ValueError("niah-text needs --text FILE (one or more text files for its haystack)")

    def haystack(self, tokenizer) -> Callable[[int], list[int]]:
        if self.texts:
            return lambda n: text_haystack(tokenizer, self.texts, n)
        return lambda n: noise_haystack(tokenizer, n)

    def samples(self, tokenizer, length: int, count: int, seed: int) -> list[Sample]:
        check_count(count)
        words = tokenizer_words(tokenizer)
        haystack = self.haystack(tokenizer)
        samples = []
        for depth in map(float, self.depths):
            for index in range(count):
                rng = random.Random(f"{self.name}:{seed}:{length}:{depth}:{index}")
                key, value = rng.choice(words), magic_number(rng)
                head, tail = niah_wording("number", key, many=False)
                needle = NEEDLE.format(kind="number", key=key, value=value)
                ids = needle_prompt(
                    tokenizer,
                    length,
                    head=head,
                    tail=tail,
                    needles=[needle],
                    depths=[depth],
                    haystack=haystack,
                    what=self.name,
                )
                samples.append(Sample(self.name, length, depth, index, ids, (value,), self.max_new_tokens))
        return samples

    def score(self, sample: Sample, answer: str) -> float:
        return string_match_all(answer, sample.expected)
