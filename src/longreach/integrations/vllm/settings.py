"""The method a vLLM engine runs: the spec from the environment or vLLM's ``additional_config``,
resolved for ``max_model_len`` on the model's config, and refused with LongReach's own message
when it cannot serve that length."""

from __future__ import annotations

import os
from dataclasses import dataclass

from longreach.methods.base import Method, Part
from longreach.methods.coverage import method_for
from longreach.models.config import model_identity, sliding_window, trained_length

#: The environment variable naming the method (a spec as on the command line).
METHOD_ENV = "LONGREACH_METHOD"
#: The key of vLLM's ``--additional-config`` naming the method.
CONFIG_KEY = "longreach_method"


@dataclass(frozen=True)
class Plan:
    """What every attention layer of the engine executes."""

    method: Method
    parts: tuple[Part, ...]
    trained_length: int


def requested_spec(additional_config: object = None) -> str | None:
    """The method spec asked for: ``additional_config["longreach_method"]``, else the environment.

    Example:
        >>> requested_spec({"longreach_method": "rerope:auto"})
        'rerope:auto'
    """
    if isinstance(additional_config, dict) and additional_config.get(CONFIG_KEY):
        return str(additional_config[CONFIG_KEY])
    return os.environ.get(METHOD_ENV) or None


def names_a_method(spec: str | None) -> bool:
    """Whether ``spec`` asks for a method other than vLLM's own attention (``vanilla``).

    Example:
        >>> names_a_method("rerope:auto"), names_a_method("vanilla"), names_a_method(None)
        (True, False, False)
    """
    return spec is not None and spec.partition(":")[0] != "vanilla"


def check_parallelism(parallel_config) -> None:
    """Refuse tensor and pipeline parallelism with a method. Split across workers, each would hold
    its own share of the heads or layers, its own copies of the running requests' keys and values
    and its own RoPE tables, with the runner hooks running in each: no test has run that (the
    tests check the whole model in one worker against the transformers path), so it is refused
    rather than served unchecked.

    Example:
        >>> from types import SimpleNamespace
        >>> check_parallelism(SimpleNamespace(tensor_parallel_size=1, pipeline_parallel_size=1))
    """
    sizes = {
        "tensor_parallel_size": parallel_config.tensor_parallel_size,
        "pipeline_parallel_size": parallel_config.pipeline_parallel_size,
    }
    split = ", ".join(f"{name} {size}" for name, size in sizes.items() if size > 1)
    if split:
        raise ValueError(
            f"LongReach: {split}: the vLLM plugin runs a method with the whole model in one worker; split "
            "across workers (tensor or pipeline parallelism) it is unverified, so it is refused rather than "
            "risk wrong answers. Start vLLM with --tensor-parallel-size 1 --pipeline-parallel-size 1, or "
            f"without {METHOD_ENV} (and longreach_method in --additional-config) for vLLM's own attention"
        )


def plan_for(spec: str | None, hf_config, max_model_len: int) -> Plan | None:
    """The plan ``spec`` runs for contexts of ``max_model_len`` tokens on a model with ``hf_config``;
    None for vLLM's own attention (no spec, or ``vanilla``). Raises ``ValueError`` naming the fix
    for a method vLLM cannot run through a plan or settings that do not cover ``max_model_len``.
    """
    if spec is None:
        return None
    trained = trained_length(hf_config)
    window = sliding_window(hf_config)
    try:
        method = method_for(spec, max_model_len, trained, sliding_window=window, model=model_identity(hf_config))
    except ValueError as error:
        raise ValueError(f"LongReach ({METHOD_ENV}={spec!r}, max_model_len {max_model_len}): {error}") from None
    if method.attention == "model":
        return None
    if method.attention == "model-rope":
        raise ValueError(
            f"LongReach: {method.spec()} rescales the model's RoPE, which vLLM does itself: drop {METHOD_ENV} and "
            f'start vLLM with --hf-overrides \'{{"rope_parameters": {{"rope_type": "{method.rope_type}", '
            f'"factor": {method.factor}, "original_max_position_embeddings": {trained}}}}}\' instead'
        )
    if method.attention == "memory":
        raise ValueError(
            f"LongReach: {method.spec()} keeps a block memory outside the paged KV cache, which the vLLM plugin "
            "does not run yet; serve a plan method (rerope:auto, self-extend:auto, dual-chunk:auto, ...) or use "
            "InfLLM through transformers (longreach.extend)"
        )
    method.check_model(trained)
    if window is not None:
        method.check_window(window, trained)
    return Plan(method=method, parts=method.parts(), trained_length=trained)


def plan_of(config) -> Plan | None:
    """The plan of an engine's ``VllmConfig`` (see :func:`plan_for`)."""
    model = config.model_config
    return plan_for(requested_spec(config.additional_config), model.hf_config, model.max_model_len)
