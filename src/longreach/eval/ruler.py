"""RULER's synthetic tasks (Hsieh et al. 2024, github.com/NVIDIA/RULER), rebuilt from their
published recipes with RULER's prompt wording and answer prefixes, for exact token lengths and
with nothing downloaded.

Differences from RULER, all because nothing may be downloaded or because prompts must be exactly
the asked length:

- Haystacks are the noise sentences (RULER's essay haystack needs Paul Graham's essays); so
  ``niah_single_uuid`` (RULER's niah_single_3 on noise) takes the place of niah_single_2/3, and
  the multi-needle tasks use noise too.
- Keys and the common words are words of the tokenizer's own vocabulary (``tokenizer_words``),
  not wonderwords' lists; RULER's niah keys are "adjective-noun" pairs.
- No one-shot example is prepended (RULER adds one to vt and cwe); the answer prefix alone
  makes a completion model answer.
- The list tasks (cwe, fwe) take items while the next one fits; the few tokens left over are
  newlines between the list and the question.
- Answer prefixes end without RULER's trailing space: with a word-start-marking tokenizer a
  trailing space token is never what the model would produce itself.

Every score is RULER's ``string_match_all``: the fraction of the expected strings in the answer.
"""

from __future__ import annotations

import functools
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from longreach.eval.haystack import needle_prompt, noise_haystack
from longreach.eval.niah import NEEDLE, NUMBER_NEW_TOKENS, magic_number, magic_uuid, niah_wording, tokenizer_words
from longreach.eval.task import Sample, Task, check_count, string_match_all

#: RULER draws needle depths from 40 evenly spaced ones, from 0 to 100% of the haystack.
DEPTH_STEPS = 40

VT_HEAD = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
VT_TAIL = (
    "\nQuestion: Find all variables that are assigned the value {value} in the text above. "
    "Answer: According to the chain(s) of variable assignment in the text above, {count} variables are "
    "assigned the value {value}, they are:"
)
CWE_HEAD = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n"
)
CWE_TAIL = (
    "\nQuestion: What are the {count} most common words in the above list? "
    "Answer: The top {count} words that appear most often in the list are:"
)
FWE_HEAD = (
    "Read the following coded text and track the frequency of each coded word. "
    "Find the three most frequently appeared coded words."
)
FWE_TAIL = (
    "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text? "
    "Answer: According to the coded text above, the three most frequently appeared words are:"
)
# Words of the cwe wording are kept out of its list, so the question cannot count them.
_CWE_RESERVED = frozenset(re.findall(r"[a-z]+", (CWE_HEAD + CWE_TAIL).lower()))

# max_new_tokens: RULER generates 128 tokens for every niah task, far more than an answer takes.
# These bound what a right answer needs with room for a short preamble: a 7-digit number is 7-8
# tokens with digit-split vocabularies, a uuid 25-36, four numbers about 40, five variable names
# about 20 (RULER: 30), ten numbered words about 40 (RULER: 120), three coded words about 12
# (RULER: 50).
UUID_NEW_TOKENS = 48
MULTI_NEW_TOKENS = 64
VT_NEW_TOKENS = 30
CWE_NEW_TOKENS = 120
FWE_NEW_TOKENS = 50


def ruler_depths(rng: random.Random, n: int) -> list[float]:
    """``n`` different needle depths drawn from RULER's 40-step grid.

    Example:
        >>> ruler_depths(random.Random(0), 2)
        [0.6153846153846154, 0.6666666666666666]
    """
    return [k / (DEPTH_STEPS - 1) for k in rng.sample(range(DEPTH_STEPS), n)]


def _rng(name: str, seed: int, length: int, index: int) -> random.Random:
    return random.Random(f"{name}:{seed}:{length}:{index}")


def _distinct(rng: random.Random, make: Callable[[random.Random], str], n: int) -> list[str]:
    found: list[str] = []
    while len(found) < n:
        value = make(rng)
        if value not in found:
            found.append(value)
    return found


def _letters(alphabet: str, k: int) -> Callable[[random.Random], str]:
    return lambda rng: "".join(rng.choices(alphabet, k=k))


def _pad(tokenizer, n: int) -> list[int]:
    # Newlines: neutral filler that neither adds list items nor touches the question.
    unit = tokenizer("\n", add_special_tokens=False).input_ids
    return (unit * n)[:n]


def _too_short(name: str, minimum: int, length: int) -> ValueError:
    return ValueError(f"a {name} prompt needs at least {minimum} tokens, {length} were asked for")


@dataclass(frozen=True)
class RulerNiah:
    """RULER's needle in a haystack: ``keys`` word keys (the ones not asked for are distractors)
    with ``values`` values each (7-digit numbers or uuids), ``queries`` keys asked for at once,
    in noise sentences at depths drawn from RULER's grid; every value of the asked keys is expected.

    Example:
        >>> task = RulerNiah("ruler:niah_multivalue", values=4)
        >>> len(task.samples(tokenizer, 4096, 1, seed=0)[0].expected)  # doctest: +SKIP
        4
    """

    name: str
    kind: str = "number"  # of the values: "number" or "uuid"
    keys: int = 1
    values: int = 1
    queries: int = 1
    max_new_tokens: int = NUMBER_NEW_TOKENS

    def samples(self, tokenizer, length: int, count: int, seed: int) -> list[Sample]:
        check_count(count)
        words = tokenizer_words(tokenizer)
        make = magic_uuid if self.kind == "uuid" else magic_number
        samples = []
        for index in range(count):
            rng = _rng(self.name, seed, length, index)
            keys = rng.sample(words, max(self.keys, self.queries))
            values = _distinct(rng, make, len(keys) * self.values)
            by_key = [values[i * self.values : (i + 1) * self.values] for i in range(len(keys))]
            needles = [NEEDLE.format(kind=self.kind, key=keys[i], value=v) for i in range(len(keys)) for v in by_key[i]]
            rng.shuffle(needles)
            depths = ruler_depths(rng, len(needles))
            asked = rng.sample(range(len(keys)), self.queries)
            query = keys[asked[0]]
            if len(asked) > 1:
                query = ", ".join(keys[i] for i in asked[:-1]) + ", and " + keys[asked[-1]]
            expected = tuple(v for i in asked for v in by_key[i])
            head, tail = niah_wording(self.kind, query, many=len(expected) > 1)
            ids = needle_prompt(
                tokenizer,
                length,
                head=head,
                tail=tail,
                needles=needles,
                depths=depths,
                haystack=lambda n: noise_haystack(tokenizer, n),
                what=self.name,
            )
            samples.append(Sample(self.name, length, min(depths), index, ids, expected, self.max_new_tokens))
        return samples

    def score(self, sample: Sample, answer: str) -> float:
        return string_match_all(answer, sample.expected)


@dataclass(frozen=True)
class VariableTracking:
    """RULER's variable tracking: a chain "VAR ABCDE = 12345", "VAR FGHIJ = VAR ABCDE", ...
    (``hops`` links, names of 5 capital letters) spread in order through noise sentences; the
    answer must name every variable of the first chain. Other ``chains`` are distractors.

    Example:
        >>> VariableTracking().samples(tokenizer, 4096, 1, seed=0)[0].expected  # doctest: +SKIP
        ('RKOPZ', 'ULFZF', 'WMAST', 'QHGFU', 'RLQLP')
    """

    name: str = "ruler:vt"
    chains: int = 1
    hops: int = 4
    max_new_tokens: int = VT_NEW_TOKENS

    def samples(self, tokenizer, length: int, count: int, seed: int) -> list[Sample]:
        check_count(count)
        samples = []
        for index in range(count):
            rng = _rng(self.name, seed, length, index)
            names = _distinct(rng, _letters(string.ascii_uppercase, 5), self.chains * (self.hops + 1))
            values = _distinct(rng, lambda r: str(r.randint(10000, 99999)), self.chains)
            needles, depths = [], []
            for c in range(self.chains):
                chain = names[c * (self.hops + 1) : (c + 1) * (self.hops + 1)]
                needles.append(f"VAR {chain[0]} = {values[c]}.")
                needles += [f"VAR {b} = VAR {a}." for a, b in zip(chain, chain[1:], strict=False)]
                depths += sorted(ruler_depths(rng, self.hops + 1))  # ascending: the chain reads in order
            tail = VT_TAIL.format(value=values[0], count=self.hops + 1)
            ids = needle_prompt(
                tokenizer,
                length,
                head=VT_HEAD,
                tail=tail,
                needles=needles,
                depths=depths,
                haystack=lambda n: noise_haystack(tokenizer, n),
                what=self.name,
            )
            expected = tuple(names[: self.hops + 1])
            samples.append(Sample(self.name, length, min(depths), index, ids, expected, self.max_new_tokens))
        return samples

    def score(self, sample: Sample, answer: str) -> float:
        return string_match_all(answer, sample.expected)


class _EntryNumbers:
    """Token ids of the list's entry numbers "1.", " 2.", " 3.", ... (the list starts on a fresh
    line, every later number follows a word), tokenized in growing chunks as lists get longer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[list[int]] = []
        self.spent = [0]  # spent[e]: tokens of the first e numbers

    def tokens(self, entries: int) -> int:
        """Tokens of the first ``entries`` numbers."""
        while len(self.spent) <= entries:
            first = len(self.ids) + 1
            more = range(first, first + max(512, len(self.ids) // 2))
            chunk = self.tokenizer([f"{i}." if i == 1 else f" {i}." for i in more], add_special_tokens=False)
            for ids in chunk.input_ids:
                self.ids.append(ids)
                self.spent.append(self.spent[-1] + len(ids))
        return self.spent[entries]


@functools.lru_cache(maxsize=8)
def _entry_numbers(tokenizer) -> _EntryNumbers:
    return _EntryNumbers(tokenizer)


@functools.lru_cache(maxsize=8)
def _list_words(tokenizer) -> dict[str, list[int]]:
    # The cwe vocabulary with each word's token ids after a space, tokenized once per tokenizer.
    words = [w for w in tokenizer_words(tokenizer) if w not in _CWE_RESERVED]
    pieces = tokenizer([" " + w for w in words], add_special_tokens=False).input_ids
    return dict(zip(words, pieces, strict=True))


def _fill(
    numbers: _EntryNumbers,
    word_ids: dict[str, list[int]],
    budget: int,
    common: list[str],
    others: list[str],
    often: int,
    rarely: int,
) -> tuple[int, int] | None:
    """(other words taken, tokens used) of a list with the common words ``often`` times and other
    words ``rarely`` times while they fit; None when the common words alone do not fit."""
    # An entry is at least 2 tokens (number, word): the early outs keep from tokenizing numbers
    # of entries that cannot fit.
    entries = len(common) * often
    if 2 * entries > budget:
        return None
    used = numbers.tokens(entries) + often * sum(len(word_ids[w]) for w in common)
    if used > budget:
        return None
    taken = 0
    for word in others:
        end = entries + rarely
        if 2 * end > budget:
            break
        more = numbers.tokens(end) - numbers.tokens(entries) + rarely * len(word_ids[word])
        if used + more > budget:
            break
        used, entries, taken = used + more, end, taken + 1
    return taken, used


@dataclass(frozen=True)
class CommonWords:
    """RULER's common words extraction: a numbered list ("1. word 2. word ...") in which
    ``common`` words appear 30 times each and the others 3 times (6 and 1 below 4,096 tokens, as
    RULER does); as many other words as fit. When the tokenizer's words run out first, both
    frequencies are multiplied (60/6, 90/9, ...) to fill the length. The common words are expected.

    Example:
        >>> len(CommonWords().samples(tokenizer, 8192, 1, seed=0)[0].expected)  # doctest: +SKIP
        10
    """

    name: str = "ruler:cwe"
    common: int = 10
    max_new_tokens: int = CWE_NEW_TOKENS

    def samples(self, tokenizer, length: int, count: int, seed: int) -> list[Sample]:
        check_count(count)
        word_ids = _list_words(tokenizer)
        numbers = _entry_numbers(tokenizer)
        head = tokenizer(CWE_HEAD, add_special_tokens=True).input_ids
        tail = tokenizer(CWE_TAIL.format(count=self.common), add_special_tokens=False).input_ids
        budget = length - len(head) - len(tail)
        often, rarely = (30, 3) if length >= 4096 else (6, 1)
        samples = []
        for index in range(count):
            rng = _rng(self.name, seed, length, index)
            pool = list(word_ids)
            rng.shuffle(pool)
            common, others = pool[: self.common], pool[self.common :]
            scale, plan = 1, _fill(numbers, word_ids, budget, common, others, often, rarely)
            if plan is None:
                entries = self.common * often
                words = often * sum(len(word_ids[w]) for w in common)
                raise _too_short(self.name, len(head) + len(tail) + numbers.tokens(entries) + words, length)
            while plan[0] == len(others):  # every word is in and there is room left: repeat them all more
                bigger = _fill(numbers, word_ids, budget, common, others, often * (scale + 1), rarely * (scale + 1))
                if bigger is None:
                    break
                scale, plan = scale + 1, bigger
            taken, used = plan
            items = common * (often * scale) + others[:taken] * (rarely * scale)
            rng.shuffle(items)
            ids = list(head)
            for number, word in zip(numbers.ids, items, strict=False):  # numbers may be tokenized ahead
                ids += number + word_ids[word]
            ids += _pad(tokenizer, budget - used) + tail
            samples.append(Sample(self.name, length, None, index, ids, tuple(common), self.max_new_tokens))
        return samples

    def score(self, sample: Sample, answer: str) -> float:
        return string_match_all(answer, sample.expected)


def _zeta(alpha: float) -> float:
    # Riemann zeta by a partial sum and the Euler-Maclaurin tail (error far below 1e-9).
    m = 1000
    return sum(k**-alpha for k in range(1, m)) + m ** (1 - alpha) / (alpha - 1) + m**-alpha / 2


def _zipf(n: int, shares: list[float]) -> list[int]:
    # RULER's counts: n words shared by rank, each share rounded down.
    return [int(n * share) for share in shares]


def _cost(counts: list[int], costs: list[int]) -> int:
    return sum(c * k for c, k in zip(counts, costs, strict=True))


@dataclass(frozen=True)
class FrequentWords:
    """RULER's frequent words extraction: coded words (random lowercase strings of
    ``word_length`` letters) repeated by a Zipf law of exponent ``alpha`` over a vocabulary of
    ``length // 50`` words (at least 10), shuffled; the most frequent "word" is ``...`` (noise to ignore), the
    next three are expected.

    Example:
        >>> FrequentWords().samples(tokenizer, 4096, 1, seed=0)[0].expected  # doctest: +SKIP
        ('khyikb', 'aecnyp', 'osnmft')
    """

    name: str = "ruler:fwe"
    alpha: float = 2.0
    word_length: int = 6
    max_new_tokens: int = FWE_NEW_TOKENS

    def samples(self, tokenizer, length: int, count: int, seed: int) -> list[Sample]:
        check_count(count)
        if self.alpha <= 1:
            raise ValueError(f"the Zipf exponent alpha must be > 1, got {self.alpha}")
        head = tokenizer(FWE_HEAD, add_special_tokens=True).input_ids
        tail = tokenizer(FWE_TAIL, add_special_tokens=False).input_ids
        budget = length - len(head) - len(tail)
        size = max(length // 50, 10)
        zeta = _zeta(self.alpha)
        shares = [k**-self.alpha / zeta for k in range(1, size + 1)]
        samples = []
        for index in range(count):
            rng = _rng(self.name, seed, length, index)
            vocab = sorted(_distinct(rng, _letters(string.ascii_lowercase, self.word_length), size))
            rng.shuffle(vocab)
            vocab[0] = "..."  # the most frequent is noise, as in RULER
            vocab_ids = tokenizer([" " + w for w in vocab], add_special_tokens=False).input_ids
            costs = [len(ids) for ids in vocab_ids]
            # The most words that fit, by bisection: the cost grows with n, and the top rank alone
            # takes over budget tokens (>= 1 each) beyond this n.
            low, high = 0, int((max(budget, 0) + 1) / shares[0]) + 1
            while low < high:
                mid = (low + high + 1) // 2
                low, high = (mid, high) if _cost(_zipf(mid, shares), costs) <= budget else (low, mid - 1)
            found = _zipf(low, shares)
            if found[3] <= found[4]:  # the third answer must be strictly more frequent than the rest
                n = low + 1
                while (more := _zipf(n, shares))[3] <= more[4]:
                    n += 1
                raise _too_short(self.name, len(head) + len(tail) + _cost(more, costs), length)
            items = [i for i, c in enumerate(found) for _ in range(c)]
            rng.shuffle(items)
            ids = list(head)
            for i in items:
                ids += vocab_ids[i]
            ids += _pad(tokenizer, budget - _cost(found, costs)) + tail
            samples.append(Sample(self.name, length, None, index, ids, tuple(vocab[1:4]), self.max_new_tokens))
        return samples

    def score(self, sample: Sample, answer: str) -> float:
        return string_match_all(answer, sample.expected)


#: Every RULER task by its short name (``build_tasks`` takes ``ruler:NAME``), in a fixed order.
RULER_TASKS: dict[str, Task] = {
    "niah_single_1": RulerNiah("ruler:niah_single_1"),
    "niah_single_uuid": RulerNiah("ruler:niah_single_uuid", kind="uuid", max_new_tokens=UUID_NEW_TOKENS),
    "niah_multikey": RulerNiah("ruler:niah_multikey", keys=4),
    "niah_multivalue": RulerNiah("ruler:niah_multivalue", values=4, max_new_tokens=MULTI_NEW_TOKENS),
    "niah_multiquery": RulerNiah("ruler:niah_multiquery", queries=4, max_new_tokens=MULTI_NEW_TOKENS),
    "vt": VariableTracking(),
    "cwe": CommonWords(),
    "fwe": FrequentWords(),
}
