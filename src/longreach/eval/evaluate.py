"""One evaluation of a loaded model into a results folder: the pipeline behind ``longreach
passkey``, ``longreach perplexity`` and ``longreach compare``.

An :class:`Evaluation` says what to measure (methods x tasks x lengths, perplexity over texts);
:func:`evaluate` puts the model in each method's state in turn (``NAME:auto`` settings picked
per length), runs every missing cell through :func:`longreach.eval.compare.run_compare` (one
JSON line per cell in ``results.jsonl``, so a rerun resumes), restores the model and rebuilds
the folder's report. The presets:

- :func:`passkey_evaluation`: the passkey task alone; the folder also gets ``passkey.json`` and
  ``passkey.png`` (accuracy by length).
- :func:`perplexity_evaluation`: perplexity over a text, read once per method with the settings
  a ``NAME:auto`` picks for the longest length; the shorter lengths are its prefixes (by
  causality, exactly what an input of that length would score with those settings). Methods
  whose attention depends on the input length (dynamic NTK) read each length on its own. The
  folder also gets ``perplexity.json`` and ``perplexity.png`` (perplexity by position).
  Compare's ``ppl`` task instead reads each length with the settings picked for that length,
  sharing a run only between lengths whose settings agree.

Example:
    >>> evaluation = passkey_evaluation(["vanilla", "self-extend:auto"], [4096, 8192])
    >>> evaluate(model, tokenizer, evaluation, Path("results/passkey"), model_name="smollm2-135m")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from longreach.data import DEFAULT_TEXT
from longreach.eval.compare import Work, run_compare
from longreach.eval.passkey import FILLER, PasskeyTask
from longreach.eval.report import RUN, read_run, write_report
from longreach.eval.task import DEFAULT_DEPTHS, Task


@dataclass(frozen=True)
class Evaluation:
    """What to measure: every method at every length on every task, and perplexity over
    ``texts`` with ``ppl``. ``prefixes``: perplexity settings are those of the longest length
    (shorter lengths are prefixes of its run). ``summaries`` names the preset summaries written
    beside the report (``passkey``, ``perplexity``)."""

    methods: tuple[str, ...]
    lengths: tuple[int, ...]
    tasks: tuple[Task, ...] = ()
    ppl: bool = False
    texts: tuple[Path, ...] = ()
    samples: int = 1
    seed: int = 0
    prefixes: bool = False
    summaries: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.methods:
            raise ValueError("give at least one method")
        if not self.lengths:
            raise ValueError("give at least one length")
        if not self.tasks and not self.ppl:
            raise ValueError("give at least one task")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")


def passkey_evaluation(
    methods: Sequence[str],
    lengths: Sequence[int],
    *,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    samples: int = 1,
    seed: int = 0,
    filler: str = FILLER,
) -> Evaluation:
    """Passkey retrieval, methods x lengths, ``samples`` per depth."""
    task = PasskeyTask(depths=tuple(float(d) for d in depths), filler=filler)
    return Evaluation(tuple(methods), tuple(lengths), (task,), samples=samples, seed=seed, summaries=("passkey",))


def perplexity_evaluation(
    methods: Sequence[str], lengths: Sequence[int], *, texts: Sequence[Path] = (DEFAULT_TEXT,)
) -> Evaluation:
    """Perplexity over ``texts`` (read one after another), methods x lengths: one run per
    method with the settings of the longest length, the shorter lengths its prefixes."""
    return Evaluation(
        tuple(methods),
        tuple(lengths),
        ppl=True,
        texts=tuple(Path(t) for t in texts),
        prefixes=True,
        summaries=("perplexity",),
    )


def versions() -> dict[str, str]:
    """The versions that produced a result: LongReach, torch, transformers."""
    import torch
    import transformers

    import longreach

    return {"longreach": longreach.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def evaluate(
    model,
    tokenizer,
    evaluation: Evaluation,
    out: Path,
    *,
    model_name: str = "",
    command: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_cell: Callable[[dict, int], None] | None = None,
    schedule: Callable[[list[Work]], list[Work]] | None = None,
    should_stop: Callable[[Work], bool] | None = None,
) -> list[dict]:
    """Run every missing cell of ``evaluation`` on ``model`` into the folder ``out`` and rebuild
    its report (and the preset summaries); returns the folder's records. The model is restored
    to its own attention afterwards, even on error. ``schedule`` and ``should_stop`` order the
    work and end it early (see :func:`~longreach.eval.compare.run_compare`).

    Raises ``ValueError`` (``MethodSpecError``, ``InputTooLongError``, ...) before any work for
    a bad spec, settings that fall short of an input and its answer, a text too short for the
    lengths, or a folder holding another model's results; and when the model cannot take a
    method's settings.
    """
    import longreach
    from longreach.methods import method_for
    from longreach.models.config import model_identity, sliding_window, trained_length

    out = Path(out)
    trained, window = trained_length(model.config), sliding_window(model.config)
    longest = max(evaluation.lengths)
    resolved = {}

    identity = model_identity(model.config)

    def resolve(spec: str, length: int, total: int) -> str:
        method = method_for(spec, length, trained, total=total, sliding_window=window, model=identity)
        if evaluation.prefixes and not method.depends_on_length:
            longer = max(total, longest)
            method = method_for(spec, longest, trained, total=longer, sliding_window=window, model=identity)
        resolved[spec, length] = method
        return method.spec()

    def apply(spec: str, length: int) -> str:
        method = resolved[spec, length]
        longreach.extend(model, method)
        return method.spec()

    found = versions()

    def start(tokens: int) -> None:
        # Every check has passed: the folder is this model's, and the run is recorded.
        out.mkdir(parents=True, exist_ok=True)
        run = read_run(out)
        commands = [*run.get("commands", []), *([command] if command else [])]
        run.update(
            model=model_name,
            trained_length=trained,
            commands=list(dict.fromkeys(commands)),
            versions=found,
            summaries=sorted({*run.get("summaries", []), *evaluation.summaries}),
        )
        (out / RUN).write_text(json.dumps(run, indent=2) + "\n")
        if on_start:
            on_start(tokens)

    try:
        records = run_compare(
            model,
            tokenizer,
            methods=evaluation.methods,
            tasks=evaluation.tasks,
            lengths=evaluation.lengths,
            out=out,
            resolve=resolve,
            apply=apply,
            samples=evaluation.samples,
            seed=evaluation.seed,
            texts=evaluation.texts,
            ppl=evaluation.ppl,
            depends_on_length=lambda spec: resolved[spec, evaluation.lengths[0]].depends_on_length,
            model_name=model_name,
            versions=found,
            on_start=start,
            on_cell=on_cell,
            schedule=schedule,
            should_stop=should_stop,
        )
    finally:
        longreach.restore(model)
    if records:
        write_report(out)
    return records
