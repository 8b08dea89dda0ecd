from __future__ import annotations

import math

import torch

from longreach.methods.base import Method, Part, check_fits, check_int, method_config


@method_config
class SelfExtend(Method):
    """SelfExtend (LongLM): exact attention for neighbours, grouped positions for the rest.

    Pairs with distance ``i - j < window`` use their true positions. Farther pairs use key
    position ``j // group_size`` and query position
    ``i // group_size + window - window // group_size``, so distances stay inside the trained
    range while order is kept.

    ``string_offset`` (``self-extend-string`` on the command line) adds STRING's shift inside the
    grouped part: grouped pairs whose distance reaches ``string_offset`` are seen
    ``string_offset - local_value`` closer (the query moves back), so the largest, rarely trained
    distances are never used and a smaller group covers the same length (on an 8k model at 16k,
    group 2 instead of 3; at 32k, 4 instead of 6).

    Example:
        >>> method = SelfExtend(group_size=4, window=1024)
        >>> method.max_length(8192)
        29696
        >>> SelfExtend(group_size=2, window=2048, string_offset=2703).max_length(8192)
        19486
    """

    group_size: int
    window: int
    string_offset: int | None = None
    local_value: int = 128
    cli_names = ("self-extend", "self-extend-string")

    def validate(self) -> None:
        check_int("SelfExtend", "group_size", self.group_size, 1)
        check_int("SelfExtend", "window", self.window, 1)
        check_int("SelfExtend", "local_value", self.local_value, 0)
        if self.string_offset is not None:
            check_int("SelfExtend", "string_offset", self.string_offset, 1)
            if self.string_offset < self.window:
                raise ValueError(
                    f"SelfExtend: string_offset ({self.string_offset}) must be >= window ({self.window}): "
                    "STRING's shift applies to grouped pairs, which start at the window"
                )
            if self.local_value >= self.string_offset:
                raise ValueError(
                    f"SelfExtend: local_value ({self.local_value}) must be below string_offset "
                    f"({self.string_offset}): shifted pairs would otherwise be seen farther apart"
                )

    @property
    def cli_name(self) -> str:
        return "self-extend-string" if self.string_offset is not None else "self-extend"

    @classmethod
    def from_settings(cls, name: str, settings: dict) -> SelfExtend:
        if name == "self-extend-string" and settings.get("string_offset") is None:
            raise ValueError(
                "self-extend-string needs string_offset (e.g. self-extend-string:group_size=2,window=2048,"
                "string_offset=2703), or self-extend-string:auto"
            )
        if name == "self-extend" and settings.get("string_offset") is not None:
            raise ValueError("self-extend takes no string_offset; use self-extend-string:...,string_offset=...")
        return cls(**settings)

    @classmethod
    def auto(cls, name: str, target_length: int, trained_length: int, sliding_window: int | None = None) -> SelfExtend:
        return cls.for_target(target_length, trained_length, string=name == "self-extend-string")

    def parts(self) -> tuple[Part, ...]:
        g, w = self.group_size, self.window
        shift = w - w // g
        neighbour = Part("neighbour", key_span=lambda i: (i - w + 1, i + 1))
        if self.string_offset is None:
            grouped = Part(
                "grouped",
                key_span=lambda i: (i.new_zeros(i.shape), i - w + 1),
                query_position=lambda i: i // g + shift,
                key_position=lambda j: j // g,
            )
            return (neighbour, grouped)
        offset, moved = self.string_offset, self.string_offset - self.local_value

        def shifted_end(i: torch.Tensor) -> torch.Tensor:
            # Keys whose grouped distance i // g + shift - j // g reaches the offset: j // g <= i // g + shift - offset.
            return (g * (i // g + shift - offset + 1)).clamp(min=0).minimum((i - w + 1).clamp(min=0))

        grouped = Part(
            "grouped",
            key_span=lambda i: (shifted_end(i), i - w + 1),
            query_position=lambda i: i // g + shift,
            key_position=lambda j: j // g,
        )
        shifted = Part(
            "grouped-shifted",
            key_span=lambda i: (i.new_zeros(i.shape), shifted_end(i)),
            query_position=lambda i: i // g + shift - moved,
            key_position=lambda j: j // g,
        )
        return (neighbour, grouped, shifted)

    @property
    def changes_attention(self) -> bool:
        return self.group_size > 1 or self.log_scale_base is not None or self.string_offset is not None

    def max_length(self, trained_length: int) -> int | None:
        # Largest rotary distance used: window - 1 for neighbours; for grouped pairs
        # (n - 1) // g + w - w // g, less string_offset - local_value with STRING's shift. Both
        # must stay below the trained length.
        g, w = self.group_size, self.window
        if self.string_offset is not None:
            reach = trained_length - (w - w // g) + self.string_offset - self.local_value
            return g * reach if w <= trained_length else trained_length
        if g == 1:
            return None
        if w > trained_length:
            return trained_length
        return g * (trained_length - w + w // g)

    def check_model(self, trained_length: int) -> None:
        if self.string_offset is not None:  # grouped distances below the offset are used as they are
            check_fits(
                "SelfExtend",
                f"string_offset={self.string_offset}",
                self.string_offset - 1,
                trained_length,
                f"use a string_offset up to {trained_length}, e.g. SelfExtend.for_target(n, {trained_length}, "
                "string=True)",
            )

    def suggest(self, length: int, trained_length: int) -> SelfExtend:
        return SelfExtend.for_target(
            length, trained_length, string=self.string_offset is not None, log_scale_base=self.log_scale_base
        )

    @classmethod
    def for_target(cls, target_length: int, trained_length: int, *, string: bool = False, **common) -> SelfExtend:
        """Settings for inputs up to ``target_length`` on a model trained to ``trained_length``.

        The rule: window = trained_length // 4, then the smallest group size whose grouped
        positions stay inside the trained length; inputs the model was trained on need no
        grouping (group 1, exactly plain attention). Measured on SmolLM2-135M at 8k tokens
        (docs/results.md), passkey retrieval drops as the group grows and recovers as the window
        grows (group 4: 1/5 with window 1,024, 3/4 with 2,048; group 2, window 2,048: 4/4), so the
        rule spends the trained length on the window first and groups as little as it can.
        ``string`` adds STRING's shift with the reference's settings (``string_offset`` a third
        of the trained length, ``local_value`` 128), which lets a smaller group cover the target.
        ``common`` passes settings every method has (``log_scale_base``).

        Example:
            >>> SelfExtend.for_target(16384, 8192)
            SelfExtend(group_size=3, window=2048)
            >>> SelfExtend.for_target(32768, 8192, string=True)
            SelfExtend(group_size=4, window=2048, string_offset=2703)
        """
        check_int("SelfExtend.for_target", "target_length", target_length, 1)
        check_int("SelfExtend.for_target", "trained_length", trained_length, 16)
        window = max(1, trained_length // 4)
        if string:
            shifted = {"string_offset": int(0.33 * trained_length), "local_value": min(128, trained_length // 8)}
            group = 1
            while cls(group, window, **shifted).max_length(trained_length) < target_length:  # type: ignore[operator]
                group += 1
            return cls(group_size=group, window=window, **shifted, **common)
        if target_length <= trained_length:
            return cls(group_size=1, window=window, **common)
        group = max(2, math.ceil((target_length - window) / (trained_length - window)))
        while cls(group, window).max_length(trained_length) < target_length:  # type: ignore[operator]
            group += 1
        return cls(group_size=group, window=window, **common)
