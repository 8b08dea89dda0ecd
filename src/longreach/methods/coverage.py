"""How far a method's settings reach on a model: the length check every integration applies,
and the choice of settings for an input (``NAME:auto``) that must also cover its answer."""

from __future__ import annotations

from longreach.methods.base import InputTooLongError, Method
from longreach.methods.recommend import AUTO, recommend
from longreach.methods.spec import is_auto, parse_method


def check_length(method: Method, length: int, trained: int) -> None:
    """Raise :class:`InputTooLongError` when ``method`` cannot cover ``length`` tokens on a model
    trained to ``trained`` tokens, naming settings that would.

    Example:
        >>> from longreach.methods import SelfExtend
        >>> check_length(SelfExtend(group_size=4, window=1024), 32768, 8192)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        longreach.methods.base.InputTooLongError: input of 32768 tokens is longer than ...
    """
    limit = method.max_length(trained)
    if limit is None or length <= limit:
        return
    suggestion = method.suggest(length, trained)
    hint = f"; {suggestion!r} ({suggestion.spec()}) would cover it" if suggestion is not None else ""
    raise InputTooLongError(
        f"input of {length} tokens is longer than {method!r} covers on a model trained to "
        f"{trained} tokens ({limit} tokens){hint}"
    )


def method_for(
    spec: str | Method,
    length: int,
    trained_length: int,
    *,
    total: int | None = None,
    sliding_window: int | None = None,
    model: str | None = None,
) -> Method:
    """The method of ``spec`` (a config or a spec string) for inputs of ``length`` tokens that must
    still cover ``total`` (prompt plus the tokens to generate; ``length`` when None).

    ``NAME:auto`` picks its settings for ``length``, and for ``total`` when those would not reach
    the end of the answer. ``auto`` is the recommended method for ``length`` (``longreach tune``'s
    choice for ``model``, a :func:`~longreach.models.config.model_identity`, when it has one:
    :func:`~longreach.methods.recommend.recommend`). Raises
    :class:`~longreach.methods.spec.MethodSpecError` for a bad spec and :class:`InputTooLongError`
    when the settings fall short of ``total``.

    Example:
        >>> method_for("self-extend:auto", 32768, 8192, total=32800)
        SelfExtend(group_size=6, window=2048)
    """
    total = length if total is None else total
    if isinstance(spec, str) and spec.strip() == AUTO:
        spec = recommend(length, trained_length, sliding_window, model=model).auto
    auto = isinstance(spec, str) and is_auto(spec)

    def build(target: int) -> Method:
        if isinstance(spec, Method):
            return spec
        return parse_method(spec, target_length=target, trained_length=trained_length, sliding_window=sliding_window)

    method = build(length)
    limit = method.max_length(trained_length)
    if auto and limit is not None and limit < total:
        method = build(total)
    check_length(method, total, trained_length)
    return method


def unchanged_note(spec: str | Method, method: Method, length: int) -> str | None:
    """What to tell a user whose ``NAME:auto`` resolved to settings under which the method is the
    model's own attention (inputs within the trained length need no extension); None otherwise.

    Example:
        >>> from longreach.methods import SelfExtend
        >>> note = unchanged_note("self-extend:auto", SelfExtend(group_size=1, window=2048), 4096)
        >>> note.split(":")[0], note.endswith("need no extension")
        ('self-extend', True)
    """
    if not isinstance(spec, str) or not is_auto(spec) or method.changes_attention or method.attention == "model":
        return None
    return (
        f"{spec.strip()} for {length} tokens picks {method.spec()}, which is the model's own attention: "
        "inputs this short need no extension"
    )
