"""``longreach tune``: choose the method and settings for one model and one target length by
measuring them on that model, within a time budget.

The best method depends on the model and the task (on the embedded model at 32k ReRoPE finds 4 of
5 passkeys where SelfExtend and DualChunk find 1, yet all three find every RULER needle), and a
repeated synthetic filler overstates what a reader of real documents gets. So the candidates are
measured where a user reads: facts told in the user's own text (``niah-natural``: five wordings at
five depths), a multi-key needle (RULER's ``niah_multikey``), and perplexity over the same text.

Cells run in rounds of successive halving: every candidate's first needle, then every candidate's
perplexity; then the better half (by the share of needles found) gets its next
needle, and so on, halving after each round down to two finalists, which share whatever the budget
has left. A budget that ends the run early still compares the candidates of a round on the same
cells, and more of it goes to telling the best apart (on a CPU a cell at 16k takes minutes). Each
finished cell is a line of the folder's ``results.jsonl`` (compare's records): a rerun replays the
rounds from them and goes on where the last stopped, and the folder gets compare's report too. The
ranking: the candidates that got furthest first, each round's by the share found. Candidates that
found as many go in the order they were listed: the grid lists first the rule measured on the
embedded model (docs/results.md), so a budget too small to tell candidates apart falls back to it.
Perplexity is measured and shown, not ranked on: it does not rank retrieval (on the embedded model at
32k the plans with the lowest perplexity found 1 of 5 passkeys, ReRoPE 4 with the highest).

Example:
    >>> result = tune(model, tokenizer, 16384, budget=1800)  # doctest: +SKIP
    >>> longreach.extend(model, result.recommended)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from longreach.eval.compare import PPL, Work
from longreach.eval.natural import NaturalNeedleTask
from longreach.eval.report import Table
from longreach.eval.ruler import RULER_TASKS
from longreach.eval.task import DEFAULT_DEPTHS
from longreach.methods.recommend import TUNE_RECORD, recommend

#: The needle tasks whose share found ranks the candidates.
NEEDLES = ("niah-natural", "ruler:niah_multikey")
#: Tokens of the probe forward that sizes one cell before any has run.
PROBE = 1024
#: Halving stops at this many candidates, which then share the rest of the budget.
FINALISTS = 2
#: The clock the budget is kept by.
_now = time.perf_counter


@dataclass(frozen=True)
class Candidate:
    """One candidate's measurements at the target length."""

    spec: str  # as asked, e.g. "rerope:auto"
    settings: str  # what it resolved to at the target length
    found: float  # needles found (fractional for multi-key answers)
    needles: int  # needle cells measured
    perplexity: float | None

    @property
    def share(self) -> float:
        return self.found / self.needles if self.needles else 0.0


@dataclass(frozen=True)
class TuneResult:
    """The ranking of a tune run and its choice: ``recommended`` is a spec ``extend`` accepts
    (the winner's settings at the target length), ``reason`` the measurements behind it."""

    model: str
    identity: str  # models.config.model_identity: what `auto` matches a record by
    target_length: int
    ranking: tuple[Candidate, ...]
    recommended: str
    reason: str
    complete: bool  # every planned cell finished within the budget
    seconds: float  # this run's time (earlier runs into the folder not counted)
    skipped: tuple[str, ...] = ()  # candidates that cannot cover the target, with why

    def to_json(self) -> dict:
        return {**asdict(self), "ranking": [asdict(c) | {"share": c.share} for c in self.ranking]}


def parse_budget(text: str | float | int) -> float:
    """Seconds from a budget: a number of seconds, or ``90s``, ``30m``, ``1.5h``.

    Example:
        >>> parse_budget("30m"), parse_budget("1.5h"), parse_budget(45)
        (1800.0, 5400.0, 45.0)
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text).lower())
        if match is None:
            raise ValueError(f"bad budget {text!r}: give seconds, or a number with s, m or h (90s, 30m, 1.5h)")
        seconds = float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]
    if seconds <= 0:
        raise ValueError(f"the budget must be positive, got {text!r}")
    return seconds


def candidate_specs(target_length: int, trained_length: int, sliding_window: int | None = None) -> list[str]:
    """The methods and settings worth measuring for ``target_length`` tokens on a model trained to
    ``trained_length``: every method that covers any length, at its ``:auto`` settings (SelfExtend
    also with STRING's shift), plus the wider windows of ReRoPE and SelfExtend (a wider window kept
    more passkeys at 8k-32k). The rule's choice for the length comes first: ties go to it.

    Example:
        >>> candidate_specs(16384, 8192)[:3]
        ['rerope:auto', 'self-extend:auto', 'self-extend-string:auto']
        >>> candidate_specs(65536, 8192)[:2]
        ['infllm:auto', 'rerope:auto']
        >>> candidate_specs(4096, 8192)
        ['vanilla', 'string:auto']
    """
    if sliding_window is not None:  # only a memory reaches past a sliding window
        return ["infllm:auto", "vanilla"]
    if target_length <= trained_length:
        return ["vanilla", "string:auto"]
    from longreach.methods import SelfExtend

    wide = trained_length // 2
    group = 2
    while SelfExtend(group, wide).max_length(trained_length) < target_length:  # type: ignore[operator]
        group += 1
    grid = [
        "rerope:auto",
        "self-extend:auto",
        "self-extend-string:auto",
        "dual-chunk:auto",
        "leaky-rerope:auto",
        "string:auto",
        "infllm:auto",
        f"rerope:window={trained_length // 4},log_scale_base={trained_length}",
        SelfExtend(group, wide).spec(),
    ]
    rule = recommend(target_length, trained_length).auto
    return [rule, *(spec for spec in grid if spec != rule)]


def informative_first(work: list[Work]) -> list[Work]:
    """Round by round: each method's first needle, each method's perplexity, each method's next
    needle, ...; methods in the order they were given."""
    methods = list(dict.fromkeys(w.method for w in work))
    rank: dict[int, int] = {}
    seen: dict[str, int] = {}
    for position, item in enumerate(work):
        if item.sample is None:
            rank[position] = 1  # perplexity right after the first round of needles
        else:
            n = seen.get(item.method, 0)
            seen[item.method] = n + 1
            rank[position] = 0 if n == 0 else n + 1
    order = sorted(range(len(work)), key=lambda p: (rank[p], methods.index(work[p].method)))
    return [work[p] for p in order]


def next_round(work: list[Work]) -> list[Work]:
    """Of the pending ``work``, one round: each method's next needle, then any perplexity missing."""
    ordered = informative_first(work)
    needles, taken = [], set()
    for item in ordered:
        if item.sample is not None and item.method not in taken:
            needles.append(item)
            taken.add(item.method)
    return needles + [w for w in ordered if w.sample is None]


def halving(records: list[dict], specs: Sequence[str], target_length: int, seed: int) -> list[list[str]]:
    """Successive halving replayed from ``records``: the candidates still measured, then those
    dropped after each finished round, latest first. A round is finished when every candidate
    in it has that many needles and a perplexity; the better half goes on (at least
    :data:`FINALISTS`).

    Example:
        >>> halving([], ["a", "b", "c"], 16384, 0)
        [['a', 'b', 'c']]
    """
    alive, dropped, round_ = list(specs), [], 1
    while len(alive) > FINALISTS:
        ranking = rank(records, alive, target_length, seed)
        if any(c.needles < round_ or c.perplexity is None for c in ranking):
            break
        keep = max(FINALISTS, (len(alive) + 1) // 2)
        alive, dropped = [c.spec for c in ranking[:keep]], [[c.spec for c in ranking[keep:]], *dropped]
        round_ += 1
    return [alive, *dropped]


def planned_cells(candidates: int, needles: int) -> int:
    """Cells of a whole halving run: every round's needles and every candidate's perplexity.

    Example:
        >>> planned_cells(8, 6)  # needles 8 + 4 + 2 + 2 + 2 + 2, perplexities 8
        28
    """
    cells, alive = candidates, candidates
    for _ in range(needles):
        cells += alive
        alive = max(min(alive, FINALISTS), (alive + 1) // 2)
    return cells


def rank(records: list[dict], specs: Sequence[str], target_length: int, seed: int) -> list[Candidate]:
    """Candidates by the share of needles found, those that found as many in the order of
    ``specs``; those with no needle cell yet last."""
    found = []
    for spec in specs:
        cells = [r for r in records if r["method"] == spec and r["length"] == target_length and r.get("seed") == seed]
        needles = [r for r in cells if r["task"] in NEEDLES]
        ppl = [r["perplexity"] for r in cells if r["task"] == PPL]
        settings = next((r["settings"] for r in cells if r.get("settings")), spec)
        found.append(
            Candidate(spec, settings, sum(float(r["score"]) for r in needles), len(needles), ppl[-1] if ppl else None)
        )
    return sorted(found, key=lambda c: (c.needles == 0, -c.share))  # stable: ties keep the order of specs


def reason_for(ranking: Sequence[Candidate], target_length: int, *, default_grid: bool = True) -> str:
    """Why the first candidate won, in measurements (``default_grid``: the candidates were
    :func:`candidate_specs`', so a tie went to the rule's choice)."""
    best = ranking[0]
    if best.needles == 0:
        return "no candidate finished a needle within the budget: give a larger --budget"
    text = f"{best.found:g} of {best.needles} needles found at {target_length} tokens"
    if best.perplexity is not None:
        text += f", perplexity {best.perplexity:.2f}"
    others = [c for c in ranking[1:] if c.needles]
    if others:
        text += "; next " + ", ".join(f"{c.spec} {c.found:g}/{c.needles}" for c in others[:2])
    tied = sum(1 for c in others if c.share == best.share)
    if tied:
        why = " (the default grid lists the rule's choice first)" if default_grid else ""
        text += (
            f"; {tied} more found as large a share, so it won as listed first{why}: a larger --budget measures "
            "more needles to tell them apart"
        )
    return text + " (longreach tune)"


def tune_folder(model_name: str, target_length: int) -> Path:
    """Where a tune run goes unless told otherwise, and where ``auto`` looks:
    ``results/tune/NAME-LENGTH`` (NAME: the model's name, or a path's last part without ``.gguf``).

    Example:
        >>> tune_folder("models/SmolLM2.gguf", 16384)
        PosixPath('results/tune/SmolLM2-16384')
    """
    return Path("results", "tune", f"{Path(model_name).name.removesuffix('.gguf')}-{target_length}")


def ranking_table(result: TuneResult) -> Table:
    """The ranking as a report table: one row per candidate, best first."""
    cells = {}
    for position, candidate in enumerate(result.ranking, 1):
        cells[f"{position}. {candidate.spec}"] = {
            "settings": candidate.settings,
            "needles found": f"{candidate.found:g}/{candidate.needles}" if candidate.needles else "-",
            "perplexity": f"{candidate.perplexity:.2f}" if candidate.perplexity is not None else "-",
        }
    title = f"longreach tune: {result.model or 'the model'} at {result.target_length} tokens"
    return Table(title, ["settings", "needles found", "perplexity"], cells, row_label="candidate")


def tune(
    model,
    tokenizer,
    target_length: int,
    *,
    texts: Sequence[Path] = (),
    budget: str | float = "30m",
    out: Path | None = None,
    candidates: Sequence[str] | None = None,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    seed: int = 0,
    model_name: str = "",
    command: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_cell: Callable[[dict, int], None] | None = None,
) -> TuneResult:
    """Measure ``candidates`` (by default :func:`candidate_specs`) on ``model`` at
    ``target_length`` tokens within ``budget`` and rank them; writes ``out/tune.json`` beside the
    cells (``out`` by default :func:`tune_folder`, where ``auto`` looks). A rerun into
    the same folder measures only what is missing.

    Raises ``ValueError`` for a budget too small for one cell (timed on a short probe forward,
    before any cell), for candidates of which none covers the target, and for a folder holding
    another model's results.

    Example:
        >>> result = tune(model, tokenizer, 16384, budget="30m", out=Path("results/tune-16k"))  # doctest: +SKIP
        >>> result.recommended, result.reason  # doctest: +SKIP
        ('rerope:window=1024,log_scale_base=8192', '4 of 6 needles found at 16384 tokens, ...')
    """
    from longreach.eval.evaluate import Evaluation, evaluate
    from longreach.methods import method_for
    from longreach.models.config import model_identity, sliding_window, trained_length

    seconds = parse_budget(budget)
    identity = model_identity(model.config)
    out = Path(out) if out is not None else tune_folder(model_name or identity or "model", target_length)
    trained, window = trained_length(model.config), sliding_window(model.config)
    tasks = (NaturalNeedleTask(depths=tuple(depths), texts=tuple(texts) or NaturalNeedleTask().texts),)
    tasks += (RULER_TASKS["niah_multikey"],)
    # A candidate that cannot cover the prompts and their answers is left out, not an error.
    total = target_length + max(task.max_new_tokens for task in tasks)
    specs, skipped = [], []
    for spec in candidates or candidate_specs(target_length, trained, window):
        try:
            method_for(spec, target_length, trained, total=total, sliding_window=window, model=identity)
            specs.append(spec)
        except ValueError as error:
            skipped.append(f"{spec}: {error}")
    if not specs:
        raise ValueError(f"no candidate covers {target_length} tokens on this model: " + "; ".join(skipped))
    cell = _probe_seconds(model, tokenizer, target_length)
    if cell > seconds:
        raise ValueError(
            f"a budget of {seconds:g} s cannot hold one cell: reading {target_length} tokens takes at least "
            f"{cell:.0f} s on this machine (timed on {PROBE} tokens); give --budget {max(2 * cell, 60):.0f}s or more"
        )
    started = _now()
    durations: list[float] = []  # seconds from one finished cell to the next, by the budget's clock
    last = [started]

    def count(record: dict, tokens: int) -> None:
        now = _now()
        durations.append(now - last[0])
        last[0] = now
        if on_cell:
            on_cell(record, tokens)

    stopped: list[Work] = []

    def should_stop(item: Work) -> bool:
        expected = statistics.median(durations) if durations else cell
        if _now() - started + expected > seconds:
            stopped.append(item)
            return True
        return False

    def run(specs_now: Sequence[str], schedule: Callable[[list[Work]], list[Work]]) -> list[dict]:
        evaluation = Evaluation(tuple(specs_now), (target_length,), tasks, ppl=True, texts=tuple(texts), seed=seed)
        return evaluate(
            model,
            tokenizer,
            evaluation,
            out,
            model_name=model_name,
            command=command,
            on_cell=count,
            schedule=schedule,
            should_stop=should_stop,
        )

    # Every check (texts, folder, settings) passes before the first cell; nothing runs here.
    records = run(specs, lambda work: [])
    needles = len(depths) + 1  # a fact at each depth, one multi-key needle
    if on_start:
        done = sum(
            1 for r in records if r["method"] in specs and r["length"] == target_length and r.get("seed") == seed
        )
        on_start(max(planned_cells(len(specs), needles) - done, 1) * target_length)
    while not stopped:
        alive = halving(records, specs, target_length, seed)[0]
        before = len(records)
        records = run(alive, next_round)
        if len(records) == before:  # nothing left to measure for the candidates still in the run
            break
    groups = halving(records, specs, target_length, seed)
    ranking = [c for group in groups for c in rank(records, group, target_length, seed)]
    best = ranking[0]
    result = TuneResult(
        model=model_name,
        identity=identity or "",
        target_length=target_length,
        ranking=tuple(ranking),
        recommended=best.settings if best.needles else "",
        reason=reason_for(ranking, target_length, default_grid=candidates is None),
        complete=not stopped,
        seconds=round(_now() - started, 1),
        skipped=tuple(skipped),
    )
    (out / TUNE_RECORD).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def _probe_seconds(model, tokenizer, target_length: int) -> float:
    """A lower bound on one cell: a forward of ``PROBE`` tokens, scaled linearly to the target
    (attention grows faster than that, so real cells take longer)."""
    import torch

    length = min(PROBE, target_length)
    ids = torch.full((1, length), tokenizer.eos_token_id or 0, dtype=torch.long, device=model.device)
    with torch.no_grad():
        started = time.perf_counter()
        model(ids, logits_to_keep=1)
        took = time.perf_counter() - started
    return took * target_length / length
