"""What ``register`` installs in a vLLM process: the attention backend override and the hook that
reads the model's RoPE once it is loaded. Nothing of vLLM's code is copied."""

from __future__ import annotations

import functools
import os

from longreach.integrations.vllm.settings import METHOD_ENV

#: Why a method cannot run on other platforms yet, and what does.
ONLY_CPU = (
    "LongReach: the vLLM plugin runs methods on vLLM's CPU backend only in this version, not on {platform}; "
    "unset {env} (and longreach_method in --additional-config) to serve with vLLM's own attention, or run the "
    "method on this GPU through transformers (longreach.extend, longreach generate)"
)


@functools.cache
def install() -> None:
    """Override the CPU attention backend and hook model loading (once per process)."""
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    asked = os.environ.get(METHOD_ENV, "vanilla").partition(":")[0] != "vanilla"
    if not current_platform.is_cpu():
        if asked:
            raise ValueError(ONLY_CPU.format(platform=current_platform.device_name, env=METHOD_ENV))
        _refuse_other_platforms(current_platform.device_name)
        return
    if asked:
        # vLLM refuses a max_model_len past the trained length unless told otherwise; the method's
        # own check (settings.plan_for) then allows exactly what its settings cover.
        os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    register_backend(AttentionBackendEnum.CPU_ATTN, "longreach.integrations.vllm.backend.LongReachCPUAttentionBackend")
    _hook_model_loading()


def _refuse_other_platforms(platform: str) -> None:
    """A method asked for through ``--additional-config`` stops the engine there too."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    load = GPUModelRunner.load_model

    @functools.wraps(load)
    def load_model(self, *args, **kwargs):
        from longreach.integrations.vllm.settings import plan_of

        if plan_of(self.vllm_config) is not None:
            raise ValueError(ONLY_CPU.format(platform=platform, env=METHOD_ENV))
        return load(self, *args, **kwargs)

    GPUModelRunner.load_model = load_model


def _hook_model_loading() -> None:
    """After vLLM's CPU model runner loads a model, record each attention layer's RoPE and let the
    backend read the runner's batch; drop the copies of requests the runner hears have finished."""
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    load = CPUModelRunner.load_model
    if getattr(load, "_longreach", False):
        return
    update_states = CPUModelRunner._update_states

    @functools.wraps(load)
    def load_model(self, *args, **kwargs):
        result = load(self, *args, **kwargs)
        from longreach.integrations.vllm.requests import RUNNING
        from longreach.integrations.vllm.rotary import read_rotaries
        from longreach.integrations.vllm.settings import plan_of

        if plan_of(self.vllm_config) is not None:
            read_rotaries(self.model, self.vllm_config.model_config.max_model_len)
            RUNNING.bind(self)
        return result

    @functools.wraps(update_states)
    def _update_states(self, scheduler_output):
        from longreach.integrations.vllm.requests import RUNNING

        RUNNING.drop(scheduler_output.finished_req_ids | (scheduler_output.preempted_req_ids or set()))
        return update_states(self, scheduler_output)

    load_model._longreach = True
    CPUModelRunner.load_model = load_model
    CPUModelRunner._update_states = _update_states
    _share_the_kv_budget()


def _share_the_kv_budget() -> None:
    """The plugin's copies of running requests' keys and values are KV memory: vLLM's paged cache
    gets its share of the budget (``--kv-cache-memory-bytes`` or its CPU default), they the rest."""
    import logging

    from vllm.v1.worker.cpu_worker import CPUWorker

    determine = CPUWorker.determine_available_memory

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

    CPUWorker.determine_available_memory = determine_available_memory
