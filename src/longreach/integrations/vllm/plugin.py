"""What ``register`` installs in a vLLM process: the attention backend override for the platform
(CPU: ``CPU_ATTN``; CUDA: ``FLASH_ATTN``, unverified), and hooks on the model runner and worker
that read the model's RoPE once it is loaded, tell the backend each batch's requests, and share
the KV budget with the backend's copies. Nothing of vLLM's code is copied."""

from __future__ import annotations

import functools
import logging
import os

from longreach.integrations.vllm.settings import (
    METHOD_ENV,
    check_parallelism,
    names_a_method,
    plan_of,
    requested_spec,
)

#: The backend each platform gets, by vLLM's name for the backend it replaces.
BACKENDS = {
    "cpu": ("CPU_ATTN", "longreach.integrations.vllm.cpu_backend.LongReachCPUAttentionBackend"),
    "cuda": ("FLASH_ATTN", "longreach.integrations.vllm.cuda_backend.LongReachFlashAttentionBackend"),
}
#: What a platform without a LongReach backend says when a method is asked for.
UNSUPPORTED = (
    "LongReach: the vLLM plugin runs methods on vLLM's CPU backend and (unverified) its CUDA FlashAttention "
    "backend, not on {platform}; unset {env} (and longreach_method in --additional-config) to serve with vLLM's "
    "own attention, or run the method through transformers (longreach.extend, longreach generate)"
)


@functools.cache
def install() -> None:
    """Override the platform's attention backend and hook the runner (once per process)."""
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    asked = names_a_method(os.environ.get(METHOD_ENV))
    _check_engine_args()
    kind = "cpu" if current_platform.is_cpu() else "cuda" if current_platform.is_cuda() else None
    if kind is None:
        if asked:
            raise ValueError(UNSUPPORTED.format(platform=current_platform.device_name, env=METHOD_ENV))
        _refuse_at_model_load(current_platform.device_name)
        return
    if asked:
        # vLLM refuses a max_model_len past the trained length unless told otherwise; the method's
        # own check (settings.plan_for) then allows exactly what its settings cover.
        os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    name, backend = BACKENDS[kind]
    register_backend(AttentionBackendEnum[name], backend)
    _hook_the_runner(kind, backend.rpartition(".")[2])


def _check_engine_args() -> None:
    """Settle what a method needs where vLLM builds its config from the engine arguments.

    vLLM checks ``max_model_len`` against the trained length while ``EngineArgs`` builds the
    ``ModelConfig``, before the ``VllmConfig`` that carries ``additional_config`` exists; plugins
    are loaded earlier, in ``EngineArgs.__post_init__``, so a wrapped ``create_engine_config``
    sees a method named in ``additional_config`` in time to set ``VLLM_ALLOW_LONG_MAX_MODEL_LEN``
    as the environment route does (engine and worker processes start later and inherit it).
    Parallelism the plugin does not run is refused there too, before any worker starts.
    """
    from vllm.engine.arg_utils import EngineArgs

    create = EngineArgs.create_engine_config
    if getattr(create, "_longreach", False):
        return

    @functools.wraps(create)
    def create_engine_config(self, *args, **kwargs):
        asked = names_a_method(requested_spec(self.additional_config))
        if asked:
            os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
        config = create(self, *args, **kwargs)
        if asked:
            check_parallelism(config.parallel_config)
        return config

    create_engine_config._longreach = True
    EngineArgs.create_engine_config = create_engine_config


def _refuse_at_model_load(platform: str) -> None:
    """A method asked for through ``--additional-config`` stops the engine there too."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    load = GPUModelRunner.load_model

    @functools.wraps(load)
    def load_model(self, *args, **kwargs):
        from longreach.integrations.vllm.settings import plan_of

        if plan_of(self.vllm_config) is not None:
            raise ValueError(UNSUPPORTED.format(platform=platform, env=METHOD_ENV))
        return load(self, *args, **kwargs)

    GPUModelRunner.load_model = load_model


def _hook_the_runner(kind: str, backend_name: str) -> None:
    """After the model runner loads a model, record each attention layer's RoPE, check every
    layer runs LongReach's backend, and let the backend read the runner's batch; drop the copies
    of requests the runner hears have finished or were preempted; give vLLM's paged cache its share
    of the KV budget."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if kind == "cpu":
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner as Runner
        from vllm.v1.worker.cpu_worker import CPUWorker as Worker
    else:
        from vllm.v1.worker.gpu_worker import Worker

        Runner = GPUModelRunner
    load = Runner.load_model
    if getattr(load, "_longreach", False):
        return
    update_states = GPUModelRunner._update_states  # the CPU runner inherits it
    determine = Worker.determine_available_memory

    @functools.wraps(load)
    def load_model(self, *args, **kwargs):
        result = load(self, *args, **kwargs)
        from longreach.integrations.vllm.requests import RUNNING
        from longreach.integrations.vllm.rotary import read_rotaries

        if plan_of(self.vllm_config) is not None:
            check_parallelism(self.vllm_config.parallel_config)
            read_rotaries(self.model, self.vllm_config.model_config.max_model_len)
            _check_every_layer_runs(self.vllm_config, backend_name)
            RUNNING.bind(self)
        return result

    @functools.wraps(update_states)
    def _update_states(self, scheduler_output):
        from longreach.integrations.vllm.requests import RUNNING

        RUNNING.drop(scheduler_output.finished_req_ids | (scheduler_output.preempted_req_ids or set()))
        return update_states(self, scheduler_output)

    @functools.wraps(determine)
    def determine_available_memory(self) -> int:
        from longreach.integrations.vllm.requests import cache_share
        from longreach.integrations.vllm.settings import plan_of

        budget = determine(self)
        plan = plan_of(self.vllm_config)
        if plan is None:
            return budget
        share = cache_share(plan.parts, budget)
        logging.getLogger("vllm.longreach").info(
            "LongReach: %.2f of the %.2f GiB KV budget for vLLM's paged cache, the rest for the plugin's "
            "contiguous copies of running requests",
            share / 2**30,
            budget / 2**30,
        )
        return share

    load_model._longreach = True
    Runner.load_model = load_model
    GPUModelRunner._update_states = _update_states
    Worker.determine_available_memory = determine_available_memory


def _check_every_layer_runs(vllm_config, backend_name: str) -> None:
    """A layer on another backend (vLLM chose another, or was told to) would ignore the method."""
    for name, layer in vllm_config.compilation_config.static_forward_context.items():
        impl = getattr(layer, "impl", None)
        if impl is not None and hasattr(impl, "forward") and not hasattr(impl, "_take_plan"):
            raise ValueError(
                f"LongReach: layer {name} runs vLLM's {type(impl).__name__}, which ignores the method; "
                f"LongReach replaces {backend_name.removeprefix('LongReach')}: start vLLM with that backend "
                "(--attention-backend FLASH_ATTN on a GPU)"
            )
