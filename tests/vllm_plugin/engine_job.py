"""Runs one vLLM engine in its own process (an engine per method, as a server would be) and writes
what it generated: ``python engine_job.py JOB.json OUT.json``. The job names the model folder,
the engine's options, batches of prompts (token ids; each batch generated at once, one batch after
another on the same engine) and the tokens to generate; the environment carries
``LONGREACH_METHOD``. Per prompt, in order, it writes the tokens, the top-5 log-probabilities and
how many prompt tokens came from the prefix cache; besides them, how many times the scheduler
preempted a request (counted when the options turn stats on), the attention implementation each
layer runs and whether LongReach's plugin was loaded at all. A failure to start is written as
``{"error": message}``."""

import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process: starts in half the time


def main(job_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams

    job = json.loads(open(job_path).read())
    try:
        llm = LLM(
            job["model"],
            dtype="float32",
            enforce_eager=True,
            skip_tokenizer_init=True,
            **{
                "max_num_seqs": 8,
                "kv_cache_memory_bytes": 1 << 28,  # a tiny model's cache: 256 MiB, not 92% of the machine
                **job["engine"],
            },
        )
    except Exception as error:  # the refusal a user would see
        with open(out_path, "w") as handle:
            json.dump({"error": f"{type(error).__name__}: {error}"}, handle)
        return
    params = SamplingParams(max_tokens=job["new_tokens"], temperature=0, logprobs=5, detokenize=False)
    results = []
    for batch in job["batches"]:
        outputs = llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
        results += [
            {
                "tokens": list(o.outputs[0].token_ids),
                "logprobs": [{str(t): v.logprob for t, v in step.items()} for step in o.outputs[0].logprobs],
                "cached_tokens": o.num_cached_tokens,
            }
            for o in outputs
        ]
    preemptions = None
    if job["engine"].get("disable_log_stats") is False:
        preemptions = sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")
    # One process (no multiprocessing): the engine's config is the one its layers were built in.
    layers = llm.llm_engine.vllm_config.compilation_config.static_forward_context.values()
    attention = sorted({f"{type(layer.impl).__module__}.{type(layer.impl).__qualname__}" for layer in layers})
    with open(out_path, "w") as handle:
        json.dump(
            {
                "results": results,
                "preemptions": preemptions,
                "attention": attention,
                "plugin_loaded": "longreach.integrations.vllm.plugin" in sys.modules,
            },
            handle,
        )


if __name__ == "__main__":
    main(*sys.argv[1:3])
