"""Which method to use for a target length: the rule the measurements on the embedded model
support (docs/results.md), stated with its evidence, so a user knows what it rests on."""

from __future__ import annotations

from dataclasses import dataclass

from longreach.methods.coverage import method_for

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


def recommend(target_length: int, trained_length: int, sliding_window: int | None = None) -> Recommendation:
    """The method the measurements recommend for inputs of ``target_length`` tokens on a model
    trained to ``trained_length`` (with a ``sliding_window``, if it has one).

    Example:
        >>> recommend(32768, 8192).spec
        'rerope:window=1024,log_scale_base=8192'
        >>> recommend(4096, 8192).auto
        'vanilla'
    """
    if target_length <= trained_length:
        auto, reason = "vanilla", f"{target_length} tokens are within the trained {trained_length}: no method is needed"
    elif sliding_window is not None:
        auto, reason = (
            "infllm:auto",
            f"the model attends at most {sliding_window} tokens back (sliding window), so only a memory "
            "that brings distant blocks into the window reaches past it",
        )
    elif target_length <= MEASURED_FACTOR * trained_length:
        auto, reason = (
            "rerope:auto",
            "measured on SmolLM2-135M up to 4x its trained length: the most passkeys found (19 of 20, 4k-32k) "
            "and the best RULER-style average at 32k (36.7, the model's own level inside its trained length); "
            "needles in ordinary book text are found less often (1 of 3 at 16k), which is being studied",
        )
    else:
        auto, reason = (
            "infllm:auto",
            f"beyond {MEASURED_FACTOR}x the trained length: memory stays flat (blocks in RAM or a mapped file) "
            "where full attention grows with the square of the input; 3 of 5 passkeys at 16x on SmolLM2-135M",
        )
    method = method_for(auto, target_length, trained_length, sliding_window=sliding_window)
    return Recommendation(auto=auto, spec=method.spec(), reason=reason + " (docs/results.md)")
