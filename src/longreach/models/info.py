"""What LongReach knows about a model: trained length, RoPE, and which methods apply."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedModel

from longreach.integrations.transformers.rotary import describe_rotary
from longreach.methods import METHODS
from longreach.models.config import UnsupportedModelError, sliding_window, trained_length


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a model for choosing a method (see :func:`model_info`)."""

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


def model_info(model: PreTrainedModel, target_length: int | None = None) -> ModelInfo:
    """Describe ``model``; with ``target_length``, suggest settings for inputs that long.

    Example:
        >>> info = longreach.model_info(model, target_length=32768)  # doctest: +SKIP
        >>> info.suggested["self-extend"]  # doctest: +SKIP
        'self-extend:group_size=6,window=2048'
    """
    config = model.config
    length = trained_length(config)
    head_dim = getattr(config, "head_dim", None) or (
        config.hidden_size // config.num_attention_heads if hasattr(config, "num_attention_heads") else None
    )
    rope_parameters = getattr(config, "rope_parameters", None) or {}
    base = rope_parameters.get("rope_theta", getattr(config, "rope_theta", None))
    try:
        _, layouts, rope_type = describe_rotary(model)
    except UnsupportedModelError as error:
        return ModelInfo(
            model_type=config.model_type,
            trained_length=length,
            rope_type=None,
            rope_base=base,
            rotary_layout=None,
            rotary_dims=None,
            head_dim=head_dim,
            supported=False,
            reason=str(error),
            methods=dict.fromkeys(METHODS, "n/a"),
        )
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
    if target_length is not None:
        for name, cls in METHODS.items():
            if methods[name].startswith("no"):
                continue
            spec = cls.auto(name, target_length, length, window).spec()
            if name == "vanilla" and target_length > length:
                spec += f" (beyond the trained {length} tokens: expect failure)"
            suggested[name] = spec
    return ModelInfo(
        model_type=config.model_type,
        trained_length=length,
        rope_type=rope_type,
        rope_base=base,
        rotary_layout="interleaved" if layout.interleaved else "half-split",
        rotary_dims=layout.rotary_dims,
        head_dim=head_dim,
        supported=True,
        reason=None,
        methods=methods,
        suggested=suggested,
        sliding_window=window,
    )
