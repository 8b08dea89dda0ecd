"""What ``register`` installs in a vLLM process: the attention backend override and the hook that
reads the model's RoPE once it is loaded. Nothing of vLLM's code is copied."""

from __future__ import annotations

import functools
import os

from longreach.integrations.vllm.settings import METHOD_ENV


@functools.cache
def install() -> None:
    """Override the CPU attention backend and hook model loading (once per process)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    if os.environ.get(METHOD_ENV, "vanilla").partition(":")[0] != "vanilla":
        # vLLM refuses a max_model_len past the trained length unless told otherwise; the method's
        # own check (settings.plan_for) then allows exactly what its settings cover.
        os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    register_backend(AttentionBackendEnum.CPU_ATTN, "longreach.integrations.vllm.backend.LongReachCPUAttentionBackend")
    _hook_model_loading()


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
        from longreach.integrations.vllm.backend import plan_of
        from longreach.integrations.vllm.requests import RUNNING
        from longreach.integrations.vllm.rotary import read_rotaries

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
