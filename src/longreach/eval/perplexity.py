"""Perplexity by position on a long text: does the model still predict well far past its
trained length?

The text is tokenized once; for an input of L tokens the model reads the first L tokens in
chunks through its cache (chunked prefill, so logits never exceed one chunk) and the loss of
every next-token prediction is kept. Methods whose attention at a position does not depend on
how long the input will become (all but dynamic NTK) are run once at the longest length: by
causality the first L losses are exactly those of an input of L tokens. So the command reads
one document with the settings a ``NAME:auto`` picks for its longest length, and the shorter
lengths are positions along it; compare's ``ppl`` task instead reads each length with the
settings picked for that length, like its other tasks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import DynamicCache

from longreach.eval.records import append_record, read_records, same_settings
from longreach.integrations.transformers.forward_args import cache_kwargs

#: Tokens per forward call: bounds the logits to chunk x vocabulary floats.
CHUNK = 1024
#: Positions per bucket of the perplexity-by-position curve.
BUCKET = 1024


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of one method on one text: per input length, and per position bucket."""

    model: str
    method: str
    settings: str
    text: str
    length: int
    perplexity: dict[str, float]  # input length (as str, for JSON) -> perplexity over it
    bucket: int = BUCKET
    bucket_perplexity: list[float] = field(default_factory=list)  # of the run at `length`
    seconds: float = 0.0


def token_losses(model, ids: torch.Tensor, chunk: int = CHUNK, on_chunk: Callable[[int], None] | None = None):
    """Negative log-likelihood (float64, nats) of each of ids[1:] given what precedes it.

    Example:
        >>> losses = token_losses(model, tokenizer(text, return_tensors="pt").input_ids)  # doctest: +SKIP
    """
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"token_losses takes one sequence of shape (1, n), got {tuple(ids.shape)}")
    cache = DynamicCache(config=model.config)
    cache_argument = cache_kwargs(model, cache)
    losses = []
    with torch.no_grad():
        for start in range(0, ids.shape[1] - 1, chunk):
            stop = min(start + chunk, ids.shape[1] - 1)
            logits = model(ids[:, start:stop].to(model.device), use_cache=True, **cache_argument).logits
            targets = ids[0, start + 1 : stop + 1].to(logits.device)
            log_probs = torch.log_softmax(logits[0].float(), dim=-1)
            losses.append(-log_probs.gather(1, targets[:, None]).squeeze(1).double().cpu())
            if on_chunk:
                on_chunk(stop - start)
    return torch.cat(losses)


def perplexity(losses: torch.Tensor) -> float:
    """exp of the mean loss."""
    return math.exp(float(losses.mean()))


def bucket_perplexity(losses: torch.Tensor, bucket: int = BUCKET) -> list[float]:
    """Perplexity of each run of ``bucket`` consecutive predictions.

    Example:
        >>> bucket_perplexity(torch.zeros(5), bucket=2)
        [1.0, 1.0, 1.0]
    """
    return [perplexity(losses[i : i + bucket]) for i in range(0, losses.numel(), bucket)]


def run_perplexity(
    model,
    tokenizer,
    *,
    method: str,
    text_path: Path,
    lengths: Sequence[int],
    settings: str = "",
    depends_on_length: bool = False,
    model_name: str = "",
    out: Path | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> list[PerplexityResult]:
    """Perplexity of the model as it is (extended or not) on the first ``lengths`` tokens of a text.

    ``depends_on_length``: the method's attention at a position changes with the input length
    (dynamic NTK), so every length is its own run. With ``out`` (a ``.jsonl`` file) finished runs
    are appended and runs already there with the same ``settings`` are skipped.

    Example:
        >>> run_perplexity(model, tokenizer, method="vanilla", text_path=Path("novel.txt"),
        ...                lengths=[4096, 8192])  # doctest: +SKIP
    """
    text_path = Path(text_path)
    if not text_path.is_file():
        raise FileNotFoundError(f"text file {text_path} does not exist")
    ids = tokenizer(text_path.read_text(), return_tensors="pt").input_ids
    longest = max(lengths)
    if ids.shape[1] < longest + 1:
        raise ValueError(
            f"{text_path.name} has {ids.shape[1]} tokens, fewer than the {longest + 1} needed for a "
            f"{longest}-token input; pass a longer text or shorter --lengths"
        )
    # Only this model's runs count as done: a folder may hold other models' results.
    records = read_records(out) if out is not None else []
    done = {(r["method"], r["text"], r["length"]): r for r in records if r.get("model") == model_name}
    runs = sorted(lengths) if depends_on_length else [longest]
    results = []
    for run_length in runs:
        previous = done.get((method, text_path.name, run_length))
        if previous is not None and same_settings(previous.get("settings"), settings):
            results.append(PerplexityResult(**previous))
            continue
        started = time.perf_counter()
        losses = token_losses(model, ids[:, : run_length + 1], on_chunk=on_chunk)
        covered = [n for n in lengths if n <= run_length] if not depends_on_length else [run_length]
        result = PerplexityResult(
            model=model_name,
            method=method,
            settings=settings or method,
            text=text_path.name,
            length=run_length,
            perplexity={str(n): round(perplexity(losses[:n]), 4) for n in covered},
            bucket_perplexity=[round(p, 4) for p in bucket_perplexity(losses)],
            seconds=round(time.perf_counter() - started, 1),
        )
        if out is not None:
            append_record(out, asdict(result))
        results.append(result)
    return results


def perplexity_table(results: Sequence[PerplexityResult]) -> dict[str, dict[int, float]]:
    """{method: {length: perplexity}} merged over runs."""
    table: dict[str, dict[int, float]] = {}
    for result in results:
        for length, value in result.perplexity.items():
            table.setdefault(result.method, {})[int(length)] = value
    return table
