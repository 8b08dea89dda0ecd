"""What LongReach knows about a model: trained length, RoPE, and which methods apply."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedModel

from longreach.methods import METHODS, parse_length
from longreach.methods.recommend import MEASURED_FACTOR, Recommendation, recommend
from longreach.models.config import UnsupportedModelError, model_identity, sliding_window, trained_length
from longreach.models.rotary import describe_rotary


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a model for choosing a method (see :func:`model_info`).

    ``recommended`` is the method the measurements recommend for the target length (a spec
    ``extend`` accepts, with the reason); ``suggested`` gives every applicable method's settings
    for it; ``target_length`` is the length both are for.
    """

    model_type: str
    trained_length: int
    rope_type: str | None
    rope_base: float | None
    rotary_layout: str | None
    rotary_dims: int | None
    head_dim: int | None
    supported: bool
    reason: str | None
    methods: dict[str, str] = field(default_factory=dict)
    suggested: dict[str, str] = field(default_factory=dict)
    #: Attention layers' sliding window (tokens), None when every layer sees the whole context.
    sliding_window: int | None = None
    target_length: int | None = None
    recommended: Recommendation | None = None


def model_info(model: PreTrainedModel, target_length: int | str | None = None) -> ModelInfo:
    """Describe ``model`` and recommend a method for inputs of ``target_length`` tokens (an int or
    ``"32k"``; default 4x the trained length), with settings of every method for that length.

    Example:
        >>> info = longreach.model_info(model, target_length="32k")  # doctest: +SKIP
        >>> info.recommended.spec, info.suggested["self-extend"]  # doctest: +SKIP
        ('rerope:window=1024,log_scale_base=8192', 'self-extend:group_size=6,window=2048')
        >>> longreach.extend(model, info.recommended.spec)  # doctest: +SKIP
    """
    config = model.config
    length = trained_length(config)
    target_length = _target(target_length, length)
    head_dim = getattr(config, "head_dim", None) or (
        config.hidden_size // config.num_attention_heads if hasattr(config, "num_attention_heads") else None
    )
    rope_parameters = getattr(config, "rope_parameters", None) or {}
    base = rope_parameters.get("rope_theta", getattr(config, "rope_theta", None))
    known = dict(model_type=config.model_type, trained_length=length, rope_base=base, head_dim=head_dim)
    try:
        _, layouts, rope_type = describe_rotary(model)
    except UnsupportedModelError as error:
        unknown = dict(rope_type=None, rotary_layout=None, rotary_dims=None)
        return ModelInfo(**known, **unknown, supported=False, reason=str(error), methods=dict.fromkeys(METHODS, "n/a"))
    layout = next(iter(layouts.values()))  # the layer types' RoPEs differ in base, not in layout
    window = sliding_window(config)
    methods = {}
    for name, cls in METHODS.items():
        if cls.attention == "model-rope" and None not in layouts:
            methods[name] = "no: the model keeps a RoPE per layer type"
        elif cls.attention == "model-rope" and rope_type != "default":
            methods[name] = f"no: the model already scales its RoPE ({rope_type})"
        elif rope_type == "dynamic" and name != "vanilla":
            methods[name] = "yes, without cache (dynamic NTK cannot re-rotate cached keys)"
        else:
            methods[name] = "yes"
    suggested = {}
    for name, cls in METHODS.items():
        if methods[name].startswith("no"):
            continue
        spec = cls.auto(name, target_length, length, window).spec()
        if name == "vanilla" and target_length > length:
            spec += f" (beyond the trained {length} tokens: expect failure)"
        suggested[name] = spec
    return ModelInfo(
        **known,
        rope_type=rope_type,
        rotary_layout="interleaved" if layout.interleaved else "half-split",
        rotary_dims=layout.rotary_dims,
        supported=True,
        reason=None,
        methods=methods,
        suggested=suggested,
        sliding_window=window,
        target_length=target_length,
        recommended=recommend(target_length, length, window, model=model_identity(model.config)),
    )


def _target(target_length: int | str | None, trained: int) -> int:
    if target_length is None:
        return MEASURED_FACTOR * trained
    if isinstance(target_length, str):
        return parse_length(target_length)
    if isinstance(target_length, bool) or not isinstance(target_length, int) or target_length < 1:
        raise ValueError(f"target_length must be a token count such as 32768 or '32k', got {target_length!r}")
    return target_length
