from __future__ import annotations

import math

import torch

from longreach.methods.base import Method, Part, check_fits, check_int, method_config


@method_config
class ReRoPE(Method):
    """ReRoPE: exact positions inside ``window``, a fixed distance ``window`` beyond it.

    Pairs with ``i - j < window`` keep their positions. Farther pairs put the query at ``window``
    and the key at 0. Leaky ReRoPE (``leaky_factor=k``) instead puts the query at
    ``window + (i - window) / k`` and the key at ``j / k``: distances beyond the window grow
    ``k`` times slower (fractional positions). ``leaky_factor=1`` is plain attention.

    Example:
        >>> ReRoPE(window=512).spec(), ReRoPE(window=512, leaky_factor=16.0).spec()
        ('rerope:window=512', 'leaky-rerope:window=512,leaky_factor=16.0')
    """

    window: int
    leaky_factor: float | None = None
    cli_names = ("rerope", "leaky-rerope")

    def validate(self) -> None:
        check_int("ReRoPE", "window", self.window, 1)
        factor = self.leaky_factor
        if factor is not None:
            if isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor):
                raise TypeError(f"ReRoPE: leaky_factor must be a number >= 1 or None, got {factor!r}")
            if factor < 1:
                raise ValueError(f"ReRoPE: leaky_factor must be >= 1 (1 is plain attention), got {factor}")

    @property
    def cli_name(self) -> str:
        return "leaky-rerope" if self.leaky_factor is not None else "rerope"

    @classmethod
    def from_settings(cls, name: str, settings: dict) -> ReRoPE:
        if name == "leaky-rerope" and settings.get("leaky_factor") is None:
            raise ValueError("leaky-rerope needs leaky_factor (e.g. leaky-rerope:window=1024,leaky_factor=16)")
        if name == "rerope" and settings.get("leaky_factor") is not None:
            raise ValueError("rerope takes no leaky_factor; use leaky-rerope:window=...,leaky_factor=...")
        return cls(**settings)

    @classmethod
    def auto(cls, name: str, target_length: int, trained_length: int, sliding_window: int | None = None) -> ReRoPE:
        return cls.for_target(target_length, trained_length, leaky=name == "leaky-rerope")

    def parts(self) -> tuple[Part, ...]:
        window, factor = self.window, self.leaky_factor
        near = Part("near", key_span=lambda i: (i - window + 1, i + 1))
        if factor is None:
            far = Part(
                "far",
                key_span=lambda i: (torch.zeros_like(i), i - window + 1),
                query_position=lambda i: torch.full_like(i, window),
                key_position=torch.zeros_like,
            )
        else:
            far = Part(
                "far",
                key_span=lambda i: (torch.zeros_like(i), i - window + 1),
                query_position=lambda i: window + (i - window).to(torch.float64) / factor,
                key_position=lambda j: j.to(torch.float64) / factor,
            )
        return (near, far)

    def max_length(self, trained_length: int) -> int | None:
        if self.leaky_factor is None or self.window >= trained_length:
            return None  # the window itself is refused by check_model
        # Largest distance window + (n - 1 - window) / k must stay below the trained length.
        return self.window + math.floor(self.leaky_factor * (trained_length - 1 - self.window)) + 1

    def suggest(self, length: int, trained_length: int) -> ReRoPE | None:
        if self.leaky_factor is None:
            return None
        return ReRoPE.for_target(length, trained_length, leaky=True, log_scale_base=self.log_scale_base)

    def check_model(self, trained_length: int) -> None:
        check_fits(
            "ReRoPE",
            f"window={self.window}",
            self.window,
            trained_length,
            f"use a window below {trained_length}, e.g. ReRoPE.for_target(n, {trained_length})",
        )

    @classmethod
    def for_target(cls, target_length: int, trained_length: int, *, leaky: bool = False, **common) -> ReRoPE:
        """window = trained_length // 8 (ReRoPE's author uses 512 on 4k models) and log-n scaling
        with base trained_length, as in the reference. Leaky: the smallest integer factor that
        keeps every distance inside the trained length.

        Example:
            >>> ReRoPE.for_target(32768, 8192, leaky=True)
            ReRoPE(window=1024, leaky_factor=5.0, log_scale_base=8192)
        """
        check_int("ReRoPE.for_target", "target_length", target_length, 1)
        check_int("ReRoPE.for_target", "trained_length", trained_length, 16)
        common.setdefault("log_scale_base", trained_length)
        window = max(1, trained_length // 8)
        if not leaky:
            return cls(window=window, **common)
        factor = max(1, math.ceil((target_length - window) / (trained_length - 1 - window)))
        return cls(window=window, leaky_factor=float(factor), **common)
