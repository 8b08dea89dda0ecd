"""LongReach inside vLLM: a plugin that runs a LongReach position plan as vLLM's attention.

vLLM loads it through the ``vllm.general_plugins`` entry point in every process it starts;
``register`` then overrides the attention backend the platform selects, and the method comes from
``LONGREACH_METHOD`` (or ``--additional-config '{"longreach_method": "..."}'``). With no method
set, vLLM attends exactly as without the plugin.

``plugin`` registers; ``settings`` turns the spec and vLLM's config into a plan; ``rotary`` reads
each layer's RoPE off the loaded model (and makes its tables reach the whole context);
``backend`` is the attention backend that executes the plan over the paged KV cache;
``requests`` keeps each running request's keys and values contiguous between steps.
"""


def register() -> None:
    """The ``vllm.general_plugins`` entry point: safe to call in every process, any number of times."""
    from longreach.integrations.vllm.plugin import install

    install()
