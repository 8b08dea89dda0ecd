from __future__ import annotations

import torch

from longreach.methods.base import Method, Part, check_fits, check_int, method_config


@method_config
class LMInfinite(Method):
    """LM-Infinite: a local window at true positions plus the first ``n_global`` tokens.

    Pairs with ``i - j < local_window`` keep their positions. Keys ``j < n_global`` farther away
    sit at position 0 with the query at ``min(i, distance_limit)``. Every other pair is dropped,
    so a cache only keeps ``n_global + local_window`` keys and prefill costs O(n * local_window).

    Example:
        >>> LMInfinite.for_model(8192)
        LMInfinite(local_window=8192, n_global=10, distance_limit=8192)
    """

    local_window: int
    n_global: int
    distance_limit: int
    cli_names = ("lm-infinite",)

    def validate(self) -> None:
        check_int("LMInfinite", "local_window", self.local_window, 1)
        check_int("LMInfinite", "n_global", self.n_global, 0)
        check_int("LMInfinite", "distance_limit", self.distance_limit, 1)

    def parts(self) -> tuple[Part, ...]:
        window, n_global, limit = self.local_window, self.n_global, self.distance_limit
        local = Part("local", key_span=lambda i: (i - window + 1, i + 1))
        starting = Part(
            "global",
            key_span=lambda i: (torch.zeros_like(i), (i - window + 1).clamp_max(n_global)),
            query_position=lambda i: i.clamp_max(limit),
            key_position=torch.zeros_like,
        )
        return (local, starting)

    def check_model(self, trained_length: int) -> None:
        fix = f"use LMInfinite.for_model({trained_length})"
        check_fits("LMInfinite", f"local_window={self.local_window}", self.local_window - 1, trained_length, fix)
        # The paper's own setting is distance_limit = trained length: allowed, one past the last seen.
        check_fits("LMInfinite", f"distance_limit={self.distance_limit}", self.distance_limit - 1, trained_length, fix)

    @classmethod
    def for_model(cls, trained_length: int, **common) -> LMInfinite:
        """The paper's settings: local window and distance limit at the trained length, 10 global tokens."""
        check_int("LMInfinite.for_model", "trained_length", trained_length, 16)
        return cls(local_window=trained_length, n_global=10, distance_limit=trained_length, **common)

    @classmethod
    def for_target(cls, target_length: int, trained_length: int, **common) -> LMInfinite:
        """LM-Infinite covers any length: the target does not change the settings."""
        return cls.for_model(trained_length, **common)
