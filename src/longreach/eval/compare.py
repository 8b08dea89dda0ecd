"""The comparison matrix: methods x tasks x lengths, one JSON line per finished cell.

A cell is one sample of a generative task (passkey, niah, the RULER tasks) scored against its
expected strings, or one (method, length) perplexity of the ``ppl`` task. Each is appended to
``results.jsonl`` the moment it is known, with the model, the method settings, the seed and the
versions, so an interrupted run loses at most the cell in flight and a rerun with the same
arguments does only what is missing. Prompts depend on the seed alone, never on the method or
the order of work, so results are deterministic for a seed.

A perplexity run at length L answers every shorter length n that would be read with the same
settings (by causality its first n losses are those of an n-token input): ``plan`` shares one
run between such lengths. ``resolve`` decides the settings of each length, so a caller that
resolves every length to the settings of the longest (``longreach perplexity``) reads one
document once, and the shorter lengths are its prefixes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from longreach.data import DEFAULT_TEXT
from longreach.eval.haystack import check_texts
from longreach.eval.passkey import greedy_answer
from longreach.eval.perplexity import BUCKET, bucket_losses, token_losses
from longreach.eval.plots import length_label
from longreach.eval.records import append_record, read_records, same_settings
from longreach.eval.task import Sample, Task
from longreach.eval.tasks import current_prompts, prompt_version

RESULTS = "results.jsonl"
PPL = "ppl"

#: Applies a method spec to the model for inputs of a length; returns the resolved settings.
Apply = Callable[[str, int], str]


@dataclass(frozen=True)
class Work:
    """One unit of pending work: a sample to generate from, or a perplexity run."""

    method: str
    length: int
    sample: Sample | None = None  # None: the perplexity run at ``length``
    covers: tuple[int, ...] = ()  # perplexity: the lengths this run answers (causality)

    @property
    def tokens(self) -> int:
        """Progress weight: the tokens this work reads."""
        return self.length


def cell_key(record: dict) -> tuple:
    """What identifies a finished cell, so a rerun can skip it."""
    depth = record.get("depth")
    return (record["task"], record["method"], record["length"], depth, record.get("sample", 0), record.get("seed"))


def latest_cells(records: list[dict]) -> list[dict]:
    """One record per cell, the last written: a cell rerun because its settings changed (a
    ``NAME:auto`` that resolves otherwise in a newer LongReach) counts once, with its new result."""
    return list({cell_key(r): r for r in records}.values())


def text_stream(tokenizer, texts: Sequence[Path]) -> torch.Tensor:
    """Token ids (1, n) of the text files read one after another, separated by a blank line."""
    joined = "\n\n".join(p.read_text() for p in check_texts(texts))
    return tokenizer(joined, return_tensors="pt").input_ids


def plan(
    prompts: dict[tuple[str, int], list[Sample]],
    *,
    methods: Sequence[str],
    tasks: Sequence[Task],
    lengths: Sequence[int],
    seed: int,
    ppl: bool,
    depends_on_length: Callable[[str], bool],
    done: dict[tuple, dict],
    settings: Callable[[str, int], str | None] = lambda method, length: None,
    texts: Sequence[str] = (),
) -> list[Work]:
    """Every cell not in ``done`` (cell -> its record, of records with the task's current
    prompts), grouped by method then length (one model change per group). A cell recorded with
    other settings than ``settings(method, length)`` resolves to now counts as missing: a
    ``NAME:auto`` whose choice changed is rerun, not reported under its old choice; so does one
    recorded with another task ``variant`` (passkey's filler), or a perplexity cell of other
    ``texts`` (file names). A perplexity cell at length n is the first n tokens read with the
    settings ``settings(method, n)``; one run answers every length of the same settings."""

    def finished(cell: tuple, run_length: int, variant: str | None = None) -> bool:
        record = done.get(cell)
        if record is None or not same_settings(record.get("settings"), settings(cell[1], run_length)):
            return False
        if cell[0] == PPL:
            return not record.get("texts") or not texts or list(record["texts"]) == list(texts)
        return record.get("variant") == variant

    work = []
    for method in methods:
        for length in lengths:
            for task in tasks:
                variant = getattr(task, "variant", None)
                for sample in prompts[task.name, length]:
                    cell = (task.name, method, length, sample.depth, sample.index, seed)
                    if not finished(cell, length, variant):
                        work.append(Work(method, length, sample))
        if ppl:
            if depends_on_length(method):
                runs = [(n, (n,)) for n in lengths]
            else:
                # A causal method's run reads every shorter prefix too, but only lengths it would
                # run with the same settings at may share it: a NAME:auto chooses per length.
                alike: dict[str | None, list[int]] = defaultdict(list)
                for n in sorted(lengths):
                    alike[settings(method, n)].append(n)
                runs = sorted((max(covers), tuple(covers)) for covers in alike.values())
            for run_length, covers in runs:
                missing = tuple(n for n in covers if not finished((PPL, method, n, None, 0, seed), run_length))
                if missing:
                    work.append(Work(method, run_length, None, missing))
    return work


def run_compare(
    model,
    tokenizer,
    *,
    methods: Sequence[str],
    tasks: Sequence[Task],
    lengths: Sequence[int],
    out: Path,
    apply: Apply,
    resolve: Callable[[str, int, int], str] | None = None,
    samples: int = 1,
    seed: int = 0,
    texts: Sequence[Path] = (),
    ppl: bool = False,
    depends_on_length: Callable[[str], bool] = lambda method: False,
    model_name: str = "",
    versions: dict | None = None,
    on_start: Callable[[int], None] | None = None,
    on_cell: Callable[[dict, int], None] | None = None,
    schedule: Callable[[list[Work]], list[Work]] | None = None,
    should_stop: Callable[[Work], bool] | None = None,
) -> list[dict]:
    """Run every missing cell of methods x tasks x lengths (and ``ppl`` over ``texts``), appending
    each to ``out/results.jsonl`` as it finishes; returns all records of the folder.

    ``apply(method, length)`` puts the model in that method's state for inputs of ``length``
    tokens (settings of ``NAME:auto`` depend on it) and returns the resolved settings. Before
    any work, ``resolve(method, length, total)`` is called for every (method, length) with the
    tokens it must cover, prompt plus longest answer: it returns the settings ``apply`` will
    use (finished cells recorded with other settings are rerun) and raises for settings that
    fall short, so they fail at once.
    ``on_start(total_tokens)`` and ``on_cell(record, tokens)`` report progress, weighted by
    the tokens each cell reads. ``schedule(work)`` reorders the pending work (by default grouped
    by method, then length); ``should_stop(item)``, asked before each item, ends the run early
    (a time budget): what finished is recorded, and a rerun goes on from there. ``ppl`` reads
    ``texts`` (by default the novel LongReach ships, ``longreach.data.DEFAULT_TEXT``).

    Example:
        >>> tasks = build_tasks(["passkey", "niah"])  # doctest: +SKIP
        >>> run_compare(model, tokenizer, methods=["vanilla", "self-extend:auto"], tasks=tasks,
        ...             lengths=[4096, 8192], out=Path("results/cmp"), apply=apply)  # doctest: +SKIP
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if ppl and not texts:
        texts = (DEFAULT_TEXT,)
    results = Path(out) / RESULTS
    records = [r for r in read_records(results) if "task" in r and "seed" in r]
    others = sorted({str(r.get("model")) for r in records} - {model_name})
    if others:
        raise ValueError(
            f"{out} holds results of another model ({others[0]}), and one report compares one model: pass another --out"
        )
    done = {cell_key(r): r for r in records if current_prompts(r)}
    stream = text_stream(tokenizer, texts) if ppl else None
    if stream is not None:
        check_text_covers(stream.shape[1], lengths, texts)
    prompts = {(task.name, n): task.samples(tokenizer, n, samples, seed) for task in tasks for n in lengths}
    resolved: dict[tuple[str, int], str] = {}
    if resolve is not None:
        for method in methods:
            for n in lengths:
                answer = max((s.max_new_tokens for task in tasks for s in prompts[task.name, n]), default=0)
                resolved[method, n] = resolve(method, n, n + answer)
    work = plan(
        prompts,
        methods=methods,
        tasks=tasks,
        lengths=lengths,
        seed=seed,
        ppl=ppl,
        depends_on_length=depends_on_length,
        done=done,
        settings=lambda method, n: resolved.get((method, n)),
        texts=[Path(p).name for p in texts],
    )
    if schedule is not None:
        work = schedule(work)
    if on_start:
        on_start(sum(w.tokens for w in work))
    common = {"model": model_name, "seed": seed, "versions": versions or {}}
    by_name = {task.name: task for task in tasks}
    applied = None
    for item in work:
        if should_stop is not None and should_stop(item):
            break
        if applied != (item.method, item.length):
            settings = apply(item.method, item.length)
            applied = (item.method, item.length)
        started = time.perf_counter()
        if item.sample is not None:
            records = [_generate_cell(model, tokenizer, item.sample, by_name[item.sample.task])]
        else:
            records = _perplexity_cells(model, stream, item, texts)
        seconds = round(time.perf_counter() - started, 3)
        for position, record in enumerate(records, 1):
            record = {**record, "method": item.method, "settings": settings, **common, "seconds": seconds}
            append_record(results, record)
            if on_cell:
                on_cell(record, item.tokens if position == len(records) else 0)
    return [r for r in read_records(results) if "task" in r]


def check_text_covers(tokens: int, lengths: Sequence[int], texts: Sequence[Path]) -> None:
    """Raise a clear error when ``tokens`` of text are too few for a perplexity at every length
    (an n-token input needs n + 1 tokens: the last is only predicted).

    Example:
        >>> check_text_covers(5000, [4096, 8192], [Path("book.txt")])
        Traceback (most recent call last):
        ...
        ValueError: the text (book.txt) holds 5000 tokens: enough for a perplexity at lengths up to 4999, not 8k; \
pass a longer text with --text FILE (repeatable, read one after another) or shorter --lengths
    """
    if tokens >= max(lengths) + 1:
        return
    names = ", ".join(Path(p).name for p in texts)
    beyond = ", ".join(length_label(n) for n in sorted(set(lengths)) if n >= tokens)
    raise ValueError(
        f"the text ({names}) holds {tokens} tokens: enough for a perplexity at lengths up to {tokens - 1}, "
        f"not {beyond}; pass a longer text with --text FILE (repeatable, read one after another) or shorter --lengths"
    )


def _generate_cell(model, tokenizer, sample: Sample, task: Task) -> dict:
    return sample_record(sample, task, greedy_answer(model, tokenizer, sample.prompt_ids, sample.max_new_tokens))


def sample_record(sample: Sample, task: Task, answer: str) -> dict:
    """A generated cell's record (before the method and run fields): what was asked and what came
    back, scored; ``answer`` decoded and stripped as by ``greedy_answer``."""
    record = {
        "task": sample.task,
        "length": sample.length,
        "depth": sample.depth,
        "sample": sample.index,
        "expected": list(sample.expected),
        "answer": answer,
        "score": task.score(sample, answer),
        "prompt_version": prompt_version(sample.task),
    }
    variant = getattr(task, "variant", None)
    if variant is not None:
        record["variant"] = variant
    if sample.haystack is not None:
        record["haystack"] = sample.haystack
    return record


def _perplexity_cells(model, stream: torch.Tensor, item: Work, texts: Sequence[Path]) -> list[dict]:
    """One record per covered length from a single run at ``item.length`` (by causality the
    first n losses of a longer input are those of an n-token input)."""
    losses = token_losses(model, stream[:, : item.length + 1])
    records = []
    for n in item.covers:
        head = losses[:n]
        buckets = [round(loss, 5) for loss in bucket_losses(head, BUCKET)]
        records.append(
            {
                "task": PPL,
                "length": n,
                "depth": None,
                "sample": 0,
                "texts": [Path(p).name for p in texts],
                "perplexity": round(float(torch.exp(head.mean())), 4),
                "bucket": BUCKET,
                "bucket_loss": buckets,
            }
        )
    return records
