from __future__ import annotations

from dataclasses import dataclass

from longreach.methods.base import Method, Part


@dataclass(frozen=True)
class Vanilla(Method):
    """Plain causal attention at true positions: the baseline every method is compared with.

    Example:
        >>> longreach.extend(model, longreach.Vanilla())  # doctest: +SKIP
    """

    cli_name = "vanilla"

    def parts(self) -> tuple[Part, ...]:
        return (Part("causal", key_span=lambda i: (i.new_zeros(i.shape), i + 1)),)
