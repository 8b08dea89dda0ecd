"""Which method to use for a target length: what ``longreach tune`` measured on this model when
it has been run, else the rule the measurements on the embedded model support (docs/results.md),
stated with its evidence, so a user knows what it rests on. The method spec ``auto`` means this
choice wherever a spec is taken."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from longreach.methods.spec import parse_method

#: The record ``longreach tune`` leaves in its folder.
TUNE_RECORD = "tune.json"
#: Where tune records are looked for (default ``results``, every folder below it).
RESULTS_ENV = "LONGREACH_RESULTS"
#: The spec that means "the recommended method".
AUTO = "auto"

#: Beyond this multiple of the trained length the full-coverage plans were not measured, and their
#: prefill cost grows with the square of the input: a block memory keeps memory flat instead.
MEASURED_FACTOR = 4


@dataclass(frozen=True)
class Recommendation:
    """A method spec that ``extend`` accepts, with the reason it is recommended.

    ``auto`` is the ``NAME:auto`` spec; ``spec`` the settings it picks for the target length.
    """

    auto: str
    spec: str
    reason: str


def recommend(
    target_length: int, trained_length: int, sliding_window: int | None = None, *, model: str | None = None
) -> Recommendation:
    """The method recommended for inputs of ``target_length`` tokens on a model trained to
    ``trained_length`` (with a ``sliding_window``, if it has one): ``longreach tune``'s choice
    for ``model`` (:func:`~longreach.models.config.model_identity`) when a tune record covers the length, else the rule.

    Example:
        >>> recommend(32768, 8192).spec
        'rerope:window=1024,log_scale_base=8192'
        >>> recommend(4096, 8192).auto
        'vanilla'
    """
    tuned = tuned_choice(model, target_length) if model else None
    if tuned is not None:
        record, path = tuned
        auto = record["ranking"][0]["spec"]
        reason = (
            f"measured on this model by longreach tune at {record['target_length']} tokens: {record['reason']} ({path})"
        )
    else:
        auto, reason = _rule(target_length, trained_length, sliding_window)
        reason += " (docs/results.md)"
    method = parse_method(
        auto, target_length=target_length, trained_length=trained_length, sliding_window=sliding_window
    )
    return Recommendation(auto=auto, spec=method.spec(), reason=reason)


def tuned_choice(model: str, length: int, folder: Path | None = None) -> tuple[dict, Path] | None:
    """The tune record for ``model`` (its identity) with a recommendation whose target is
    the shortest at or above ``length``, and its path; None when there is none. Records are
    looked for in every folder under ``folder`` (default ``$LONGREACH_RESULTS`` or ``results``)."""
    root = Path(folder or os.environ.get(RESULTS_ENV, "results"))
    found = []
    for path in sorted(root.glob(f"**/{TUNE_RECORD}")) if root.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("identity") == model and record.get("recommended") and record["target_length"] >= length:
            found.append((record["target_length"], -path.stat().st_mtime, path, record))
    if not found:
        return None
    _, _, path, record = min(found, key=lambda f: f[:2])
    return record, path


def _rule(target_length: int, trained_length: int, sliding_window: int | None) -> tuple[str, str]:
    if target_length <= trained_length:
        return "vanilla", f"{target_length} tokens are within the trained {trained_length}: no method is needed"
    if sliding_window is not None:
        return (
            "infllm:auto",
            f"the model attends at most {sliding_window} tokens back (sliding window), so only a memory "
            "that brings distant blocks into the window reaches past it",
        )
    if target_length <= MEASURED_FACTOR * trained_length:
        return (
            "rerope:auto",
            "measured on SmolLM2-135M up to 4x its trained length: the most passkeys found (19 of 20, 4k-32k) "
            "and the best RULER-style average at 32k of the plans that attend every token (36.7, the model's own level "
            "inside its trained length); "
            "facts told in ten novels, 12 of 15 at 16k and 4 of 5 at 32k, where the model itself finds 14 of 15 "
            "and 4 of 5 of the same facts inside its trained length",
        )
    return (
        "infllm:auto",
        f"beyond {MEASURED_FACTOR}x the trained length: memory stays flat (blocks in RAM or a mapped file) "
        "where full attention grows with the square of the input; on SmolLM2-135M, reading a trained length of "
        "blocks ranked by their best key (the default) found every passkey at 2x, 4x (5 of 5) and 8x (3 of 3) "
        "and facts told in novels 12 of 15 at 2x (as ReRoPE) and 7 of 10 at 4x, where 16 blocks (as the "
        "reference reads) found 9 and 4; the reference's settings 3 of 5 passkeys at 16x",
    )
