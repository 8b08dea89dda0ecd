from __future__ import annotations

from longreach.methods.base import Method, Part, method_config


@method_config
class Vanilla(Method):
    """The model as trained, with its own attention: the baseline every method is compared with.
    ``extend(model, Vanilla())`` is ``restore(model)``; its plan (one causal part at true
    positions) is what the engine is checked against.

    Example:
        >>> longreach.extend(model, longreach.Vanilla())  # doctest: +SKIP
    """

    cli_names = ("vanilla",)
    attention = "model"

    @property
    def changes_attention(self) -> bool:
        return False

    def parts(self) -> tuple[Part, ...]:
        return (Part("causal", key_span=lambda i: (i.new_zeros(i.shape), i + 1)),)
