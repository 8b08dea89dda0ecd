from __future__ import annotations

import math

import torch

from longreach.methods.base import Method, Part, check_fits, check_int, method_config

#: The reference's factor on cos and sin, "similar to YaRN": every score times its square.
REFERENCE_ATTENTION_FACTOR = 0.1 * math.log(2) + 1


@method_config
class String(Method):
    """STRING (An et al., "Why Does the Effective Context Length of LLMs Fall Short?", ICLR 2025):
    the well-trained small distances take the place of the rarely trained large ones.

    Pairs at distance ``d = i - j < shifted_offset`` keep their true positions. Farther pairs are
    seen at distance ``d - shifted_offset + local_value`` (the query moves back by
    ``shifted_offset - local_value``, the key stays), so no distance beyond
    ``n - 1 - shifted_offset + local_value`` is ever used and the largest distances of training
    are dropped. Settings cover ``trained + shifted_offset - local_value`` tokens.

    ``attention_factor`` multiplies q and k (every score by its square), as the reference does
    with ``0.1 ln 2 + 1`` on cos and sin (``REFERENCE_ATTENTION_FACTOR``); off by default,
    as the issue's definition applies no other factor.

    The key at distance exactly ``shifted_offset`` is shifted here, as in the reference's
    decoding path (its prefill attends that key in both parts).

    Example:
        >>> method = String.for_model(8192)
        >>> method, method.max_length(8192)
        (String(shifted_offset=2703), 10767)
    """

    shifted_offset: int
    local_value: int = 128
    attention_factor: float | None = None
    cli_names = ("string",)

    def validate(self) -> None:
        check_int("STRING", "shifted_offset", self.shifted_offset, 1)
        check_int("STRING", "local_value", self.local_value, 0)
        if self.local_value >= self.shifted_offset:
            raise ValueError(
                f"STRING: local_value ({self.local_value}) must be below shifted_offset ({self.shifted_offset}): "
                "shifted pairs would otherwise be seen farther apart than they are"
            )
        factor = self.attention_factor
        if factor is not None and (
            isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor) or factor <= 0
        ):
            raise ValueError(f"STRING: attention_factor must be a positive number or None, got {factor!r}")

    def parts(self) -> tuple[Part, ...]:
        offset, local = self.shifted_offset, self.local_value
        near = Part("near", key_span=lambda i: (i - offset + 1, i + 1))
        shifted = Part(
            "shifted",
            key_span=lambda i: (torch.zeros_like(i), i - offset + 1),
            query_position=lambda i: i - offset + local,
        )
        return (near, shifted)

    def query_scale(self, positions: torch.Tensor, trained_length: int) -> torch.Tensor | None:
        scale = super().query_scale(positions, trained_length)
        if self.attention_factor is None:
            return scale
        squared = torch.full(positions.shape, float(self.attention_factor) ** 2, dtype=torch.float64)
        return squared if scale is None else scale * squared

    def max_length(self, trained_length: int) -> int | None:
        # The largest distance used, n - 1 - shifted_offset + local_value, must stay below the trained length.
        return trained_length + self.shifted_offset - self.local_value

    def check_model(self, trained_length: int) -> None:
        check_fits(
            "STRING",
            f"shifted_offset={self.shifted_offset}",
            self.shifted_offset - 1,
            trained_length,
            f"use a shifted_offset up to {trained_length}, e.g. String.for_model({trained_length})",
        )

    def suggest(self, length: int, trained_length: int) -> String | None:
        method = String.for_target(length, trained_length, local_value=self.local_value)
        return method if method.max_length(trained_length) >= length else None

    @classmethod
    def for_model(cls, trained_length: int, **settings) -> String:
        """The reference's settings: shifted_offset = int(0.33 * trained_length), local_value 128
        (at most trained_length // 8, for models trained on short contexts)."""
        check_int("String.for_model", "trained_length", trained_length, 16)
        settings.setdefault("local_value", min(128, trained_length // 8))
        return cls(shifted_offset=int(0.33 * trained_length), **settings)

    @classmethod
    def for_target(cls, target_length: int, trained_length: int, **settings) -> String:
        """The reference's settings (:meth:`for_model`), with the shift grown to the smallest that
        covers ``target_length`` when those do not (at most ``trained_length``).

        Example:
            >>> String.for_target(12288, 8192)
            String(shifted_offset=4224)
        """
        check_int("String.for_target", "target_length", target_length, 1)
        method = cls.for_model(trained_length, **settings)
        needed = target_length - trained_length + method.local_value
        if needed > method.shifted_offset:
            method = cls(**{**method.settings(), "shifted_offset": min(needed, trained_length)})
        return method
