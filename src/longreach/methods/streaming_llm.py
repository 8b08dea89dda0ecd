from __future__ import annotations

import torch

from longreach.methods.base import Method, Part, check_fits, check_int, method_config


@method_config
class StreamingLLM(Method):
    """StreamingLLM: the first ``n_sink`` tokens (attention sinks) plus the last ``window``.

    Positions are those StreamingLLM's rolling cache assigns: slots in the cache, so a recent key
    keeps its true distance to the query and a sink is at distance
    ``min(i, n_sink + window - 1) - j``. A cache keeps only ``n_sink + window`` keys.

    Example:
        >>> StreamingLLM.for_model(8192)
        StreamingLLM(n_sink=4, window=2048)
    """

    n_sink: int
    window: int
    cli_names = ("streaming-llm",)

    def validate(self) -> None:
        check_int("StreamingLLM", "n_sink", self.n_sink, 0)
        check_int("StreamingLLM", "window", self.window, 1)

    def parts(self) -> tuple[Part, ...]:
        n_sink, window = self.n_sink, self.window
        recent = Part("recent", key_span=lambda i: (i - window + 1, i + 1))
        sinks = Part(
            "sinks",
            key_span=lambda i: (torch.zeros_like(i), (i - window + 1).clamp_max(n_sink)),
            query_position=lambda i: i.clamp_max(n_sink + window - 1),
        )
        return (recent, sinks)

    def check_model(self, trained_length: int) -> None:
        check_fits(
            "StreamingLLM",
            f"n_sink + window = {self.n_sink + self.window}",
            self.n_sink + self.window - 1,
            trained_length,
            f"use StreamingLLM.for_model({trained_length})",
        )

    @classmethod
    def for_model(cls, trained_length: int, **common) -> StreamingLLM:
        """4 sinks and a quarter of the trained length as window: 2,048 on an 8k model, the
        budget of the reference's own runs (4 + 2000), with prefill O(n * window)."""
        check_int("StreamingLLM.for_model", "trained_length", trained_length, 16)
        return cls(n_sink=4, window=trained_length // 4, **common)

    @classmethod
    def for_target(cls, target_length: int, trained_length: int, **common) -> StreamingLLM:
        """StreamingLLM covers any length: the target does not change the settings."""
        return cls.for_model(trained_length, **common)
