from __future__ import annotations

import math

from longreach.methods.base import Method, Part, check_int, method_config


@method_config
class SelfExtend(Method):
    """SelfExtend (LongLM): exact attention for neighbours, grouped positions for the rest.

    Pairs with distance ``i - j < window`` use their true positions. Farther pairs use key
    position ``j // group_size`` and query position
    ``i // group_size + window - window // group_size``, so distances stay inside the trained
    range while order is kept.

    Example:
        >>> method = SelfExtend(group_size=4, window=1024)
        >>> method.max_length(8192)
        29696
    """

    group_size: int
    window: int
    cli_names = ("self-extend",)

    def validate(self) -> None:
        check_int("SelfExtend", "group_size", self.group_size, 1)
        check_int("SelfExtend", "window", self.window, 1)

    def parts(self) -> tuple[Part, ...]:
        g, w = self.group_size, self.window
        shift = w - w // g
        neighbour = Part("neighbour", key_span=lambda i: (i - w + 1, i + 1))
        grouped = Part(
            "grouped",
            key_span=lambda i: (i.new_zeros(i.shape), i - w + 1),
            query_position=lambda i: i // g + shift,
            key_position=lambda j: j // g,
        )
        return (neighbour, grouped)

    @property
    def changes_attention(self) -> bool:
        return self.group_size > 1 or self.log_scale_base is not None

    def max_length(self, trained_length: int) -> int | None:
        # Largest rotary distance used: window - 1 for neighbours; for grouped pairs
        # (n - 1) // g + w - w // g. Both must stay below the trained length.
        g, w = self.group_size, self.window
        if g == 1:
            return None
        if w > trained_length:
            return trained_length
        return g * (trained_length - w + w // g)

    def suggest(self, length: int, trained_length: int) -> SelfExtend:
        return SelfExtend.for_target(length, trained_length, log_scale_base=self.log_scale_base)

    @classmethod
    def for_target(cls, target_length: int, trained_length: int, **common) -> SelfExtend:
        """Settings for inputs up to ``target_length`` on a model trained to ``trained_length``.

        The rule: window = trained_length // 4, then the smallest group size whose grouped
        positions stay inside the trained length; inputs the model was trained on need no
        grouping (group 1, exactly plain attention). Measured on SmolLM2-135M at 8k tokens
        (docs/results.md), passkey retrieval drops as the group grows and recovers as the window
        grows (group 4: 1/5 with window 1,024, 3/4 with 2,048; group 2, window 2,048: 4/4), so the
        rule spends the trained length on the window first and groups as little as it can.
        ``common`` passes settings every method has (``log_scale_base``).

        Example:
            >>> SelfExtend.for_target(16384, 8192)
            SelfExtend(group_size=3, window=2048)
        """
        check_int("SelfExtend.for_target", "target_length", target_length, 1)
        check_int("SelfExtend.for_target", "trained_length", trained_length, 16)
        window = max(1, trained_length // 4)
        if target_length <= trained_length:
            return cls(group_size=1, window=window, **common)
        group = max(2, math.ceil((target_length - window) / (trained_length - window)))
        while cls(group, window).max_length(trained_length) < target_length:  # type: ignore[operator]
            group += 1
        return cls(group_size=group, window=window, **common)
