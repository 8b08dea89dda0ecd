"""Haystacks and the needles in them, as token ids: what passkey, niah and the RULER tasks
build their prompts from.

A prompt is a concatenation of token ids, so that it is exactly the requested number of tokens,
and every piece is tokenized in the form it takes in running text (a sentence after a sentence
end starts with its space), so that the prompt is what its own text tokenizes to: a model reads
the same tokens from a user's file. Needles go in at sentence ends: the cut for a depth moves
back to the nearest sentence end within a few tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

#: The classic filler of passkey retrieval and RULER's noise haystack.
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
#: Tokens a needle may move back from its depth to start after a sentence end.
LOOKBACK = 64
SENTENCE_ENDS = (".", "!", "?", '."', '!"', '?"', ".'", ".)")


def noise_haystack(tokenizer, n_tokens: int, sentences: str = NOISE) -> list[int]:
    """``n_tokens`` token ids of ``sentences`` (by default the classic noise), repeated.

    Example:
        >>> tokenizer.decode(noise_haystack(tokenizer, 10))  # doctest: +SKIP
        ' The grass is green. The sky is blue.'
    """
    if not sentences.strip():
        raise ValueError("the haystack's sentences must not be empty")
    # Each repeat with the one space that joins it to the text before, so every sentence, the
    # first included, starts with a word-start token as in running text.
    unit = tokenizer(" " + sentences.strip(), add_special_tokens=False).input_ids
    return (unit * (n_tokens // len(unit) + 1))[:n_tokens]


def check_texts(paths: Sequence[str | Path]) -> tuple[Path, ...]:
    """The paths as ``Path``, after checking each is a readable file with some text.

    Example:
        >>> check_texts(["no/such/book.txt"])
        Traceback (most recent call last):
        ...
        ValueError: text file no/such/book.txt does not exist
    """
    if not paths:
        raise ValueError("give at least one text file for the haystack")
    checked = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ValueError(f"text file {path} does not exist")
        if not path.read_text(encoding="utf-8", errors="replace").strip():
            raise ValueError(f"text file {path} is empty")
        checked.append(path)
    return tuple(checked)


def _joined_text(paths: tuple[Path, ...]) -> str:
    check_texts(paths)
    return "\n\n".join(p.read_text(encoding="utf-8", errors="replace").strip() for p in paths)


@functools.lru_cache(maxsize=4)
def _text_ids(tokenizer, paths: tuple[Path, ...]) -> tuple[int, ...]:
    # The files are read and tokenized once per tokenizer, not once per sample.
    return tuple(tokenizer(_joined_text(paths), add_special_tokens=False).input_ids)


@functools.lru_cache(maxsize=4)
def _repeat_ids(tokenizer, paths: tuple[Path, ...]) -> tuple[int, ...]:
    # The text again after a blank line, tokenized as it follows the text in one running text.
    text, ids = _joined_text(paths), _text_ids(tokenizer, paths)
    twice = tuple(tokenizer(text + "\n\n" + text, add_special_tokens=False).input_ids)
    if twice[: len(ids)] != ids:  # a tokenizer that merges across the blank line: join the pieces
        return tuple(tokenizer("\n\n" + text, add_special_tokens=False).input_ids)
    return twice[len(ids) :]


def text_haystack(tokenizer, paths: Sequence[str | Path], n_tokens: int) -> list[int]:
    """The first ``n_tokens`` token ids of the text files joined by blank lines; a text shorter
    than that is repeated (again after a blank line).

    Example:
        >>> ids = text_haystack(tokenizer, ["book.txt"], 8192)  # doctest: +SKIP
    """
    paths = tuple(map(Path, paths))
    ids = list(_text_ids(tokenizer, paths))  # checked when first read
    if len(ids) >= n_tokens:
        return ids[:n_tokens]
    again = list(_repeat_ids(tokenizer, paths))
    return (ids + again * ((n_tokens - len(ids)) // len(again) + 1))[:n_tokens]


def insert_needles(
    tokenizer,
    haystack: Sequence[int],
    needles: Sequence[Sequence[int]],
    depths: Sequence[float],
    *,
    lookback: int = LOOKBACK,
) -> list[int]:
    """The haystack with each needle (token ids) inserted at its depth (a fraction of the
    haystack), moved back to start after a sentence end when one is within ``lookback`` tokens.

    Needles keep the order of their depths (ties keep the given order), so a chain given with
    ascending depths stays in order. The result has ``len(haystack) + sum(map(len, needles))``
    tokens.

    Example:
        >>> needle = tokenizer(" The key is 42.", add_special_tokens=False).input_ids  # doctest: +SKIP
        >>> ids = insert_needles(tokenizer, noise_haystack(tokenizer, 500), [needle], [0.5])  # doctest: +SKIP
    """
    if len(needles) != len(depths):
        raise ValueError(f"{len(needles)} needles but {len(depths)} depths")
    for depth in depths:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth must be within [0, 1], got {depth}")
    ends: dict[int, bool] = {}

    def ends_sentence(token: int) -> bool:
        if token not in ends:
            ends[token] = tokenizer.decode([token]).rstrip().endswith(SENTENCE_ENDS)
        return ends[token]

    out: list[int] = []
    start = 0
    for i in sorted(range(len(needles)), key=lambda i: depths[i]):
        cut = max(start, round(depths[i] * len(haystack)))
        back = cut
        while back > max(start, cut - lookback) and not ends_sentence(haystack[back - 1]):
            back -= 1
        if back == start or ends_sentence(haystack[back - 1]):
            cut = back  # else no sentence end close enough: the needle goes in at the depth itself
        out += haystack[start:cut]
        out += needles[i]
        start = cut
    return out + list(haystack[start:])


def needle_prompt(
    tokenizer,
    length: int,
    *,
    head: str,
    tail: str,
    needles: Sequence[str],
    depths: Sequence[float],
    haystack: Callable[[int], list[int]],
    what: str = "needle",
) -> list[int]:
    """Token ids of exactly ``length`` tokens: ``head``, the haystack with the ``needles`` at
    their ``depths``, then ``tail`` (the question and answer prefix).

    ``haystack(n)`` gives ``n`` filler token ids. Needles are tokenized with a leading space, as
    they follow a sentence end. ``what`` names the task in the too-short error.

    Example:
        >>> ids = needle_prompt(tokenizer, 4096, head="Remember the key.\\n", tail="\\nThe key is",
        ...                     needles=["The key is 42."], depths=[0.5],
        ...                     haystack=lambda n: noise_haystack(tokenizer, n))  # doctest: +SKIP
        >>> len(ids)  # doctest: +SKIP
        4096
    """
    head_ids = tokenizer(head, add_special_tokens=True).input_ids
    tail_ids = tokenizer(tail, add_special_tokens=False).input_ids
    needle_ids = [tokenizer(" " + n, add_special_tokens=False).input_ids for n in needles]
    budget = length - len(head_ids) - len(tail_ids) - sum(map(len, needle_ids))
    if budget < 0:
        raise ValueError(f"a {what} prompt needs at least {length - budget} tokens, {length} were asked for")
    return head_ids + insert_needles(tokenizer, haystack(budget), needle_ids, depths) + tail_ids
