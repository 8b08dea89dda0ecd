from __future__ import annotations

from longreach.methods.base import Method, Part, method_config


@method_config
class Vanilla(Method):
    """Plain causal attention at true positions: the baseline every method is compared with.

    Example:
        >>> longreach.extend(model, longreach.Vanilla())  # doctest: +SKIP
    """

    cli_names = ("vanilla",)

    def parts(self) -> tuple[Part, ...]:
        return (Part("causal", key_span=lambda i: (i.new_zeros(i.shape), i + 1)),)
