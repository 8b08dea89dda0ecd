"""The plugin serves every plan method exactly as LongReach's transformers path computes it, with
vLLM's own features on, and refuses what it cannot serve before the engine starts."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request

import pytest
import torch
import transformers
from vllm_engines import TOKEN_BYTES, TRAINED, as_ids, as_text, run_engine

import longreach

LENGTH = 4 * TRAINED  # max_model_len: 4x the trained length


def prompt(length: int, seed: int) -> list[int]:
    return torch.randint(3, 512, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def reference(
    model_dir, method: str | None, prompt_ids: list[int], continuation: list[int], target_length: int = LENGTH
) -> torch.Tensor:
    """Log-probabilities (steps, vocab) of the transformers path at each generated position."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if method is not None:
        longreach.extend(model, method, target_length=target_length)
    ids = torch.tensor([prompt_ids + continuation])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1]
    return torch.log_softmax(logits.double(), dim=-1)


def assert_matches(
    model_dir, method, prompts, results, vanilla_differs: bool = True, target_length: int = LENGTH, differs_by=1e-2
):
    for prompt_ids, result in zip(prompts, results, strict=True):
        expected = reference(model_dir, method, prompt_ids, result["tokens"], target_length)
        assert result["tokens"] == expected.argmax(-1).tolist()  # greedy tokens agree
        for step, top in enumerate(result["logprobs"]):
            for token, logprob in top.items():
                assert abs(logprob - float(expected[step, int(token)])) <= 1e-3
        if vanilla_differs and len(prompt_ids) > TRAINED:  # the method changed what the model computes
            plain = reference(model_dir, None, prompt_ids, result["tokens"])
            assert (plain - expected).abs().max() > differs_by


PLANS = [
    "self-extend:auto",
    "dual-chunk:auto",
    "rerope:auto",  # with log-n scaling (log_scale_base)
    "leaky-rerope:auto",
    "lm-infinite:local_window=128,n_global=4,distance_limit=128",
    "streaming-llm:n_sink=4,window=96",
]


@pytest.mark.parametrize("method", PLANS)
def test_each_plan_matches_the_transformers_path(tiny_llama, method, tmp_path):
    """One prompt at a time, read whole (no chunked prefill, no prefix caching)."""
    prompts = [prompt(LENGTH - 6, 0), prompt(2 * TRAINED + 37, 1)]
    out = run_engine(
        tiny_llama,
        method,
        prompts,
        tmp_path=tmp_path,
        max_model_len=LENGTH,
        max_num_batched_tokens=LENGTH,
        enable_prefix_caching=False,
        enable_chunked_prefill=False,
    )
    assert "error" not in out, out.get("error")
    assert_matches(tiny_llama, method, prompts, out["results"])


def test_string_matches_the_transformers_path(tiny_llama, tmp_path):
    """STRING covers trained + shifted_offset - local_value tokens (376 here), not 4x."""
    method = "string:shifted_offset=128,local_value=8"
    prompts = [prompt(368, 16), prompt(330, 17)]
    out = run_engine(tiny_llama, method, prompts, tmp_path=tmp_path, max_model_len=376)
    assert "error" not in out, out.get("error")
    # A random model barely looks 120 positions back: the shift moves its log-probabilities by ~7e-3.
    assert_matches(tiny_llama, method, prompts, out["results"], target_length=376, differs_by=3e-3)


def assert_same(got: dict, expected: dict, tolerance: float = 1e-5) -> None:
    """The same greedy tokens and top-5 tokens, with log-probabilities equal up to float32 rounding
    (another batch shape sums the model's products in another order)."""
    assert got["tokens"] == expected["tokens"]
    for step, (top, reference_top) in enumerate(zip(got["logprobs"], expected["logprobs"], strict=True)):
        assert top.keys() == reference_top.keys(), step
        for token, logprob in top.items():
            assert abs(logprob - reference_top[token]) <= tolerance, (step, token)


@pytest.mark.parametrize("method", ["self-extend:auto", "rerope:auto", "streaming-llm:n_sink=4,window=96"])
def test_chunked_prefill_prefix_caching_and_batching_change_nothing(tiny_llama, method, tmp_path):
    """One request alone and among four of different lengths at once, read whole and in chunks of
    128 tokens, and sent again to read its first 512 tokens from the prefix cache: the same tokens
    and log-probabilities every time, and the transformers path's."""
    shared = prompt(600, 2)
    first = shared + prompt(40, 3)  # past the trained length: the method changes what it computes
    together = [first, prompt(300, 4), shared + prompt(90, 5), prompt(LENGTH - 6, 6)]
    whole = run_engine(
        tiny_llama,
        method,
        [first],
        together,
        tmp_path=tmp_path,
        max_model_len=LENGTH,
        max_num_batched_tokens=LENGTH,
        enable_chunked_prefill=False,
        enable_prefix_caching=False,
    )
    assert "error" not in whole, whole.get("error")
    alone, *whole_together = whole["results"]
    assert_same(whole_together[0], alone)
    chunked = run_engine(
        tiny_llama,
        method,
        together,
        [first],
        tmp_path=tmp_path,
        max_model_len=LENGTH,
        block_size=128,
        max_num_batched_tokens=128,
        enable_chunked_prefill=True,
        enable_prefix_caching=True,
    )
    assert "error" not in chunked, chunked.get("error")
    *chunked_together, again = chunked["results"]
    for got, expected in zip(chunked_together, whole_together, strict=True):
        assert_same(got, expected)
    # The second time, the prompt's full blocks come from the cache, but for the last token (always
    # recomputed, for its logits): 4 blocks of 128 of its 640 tokens.
    assert chunked_together[0]["cached_tokens"] == 0 and again["cached_tokens"] == (len(first) - 1) // 128 * 128
    assert all(r["cached_tokens"] == 0 for r in whole["results"])  # no prefix caching: nothing cached
    assert_same(again, chunked_together[0])
    assert_matches(tiny_llama, method, together, chunked_together, vanilla_differs=False)


def test_preempted_requests_are_recomputed_to_the_same_answer(tiny_llama, tmp_path):
    """A cache of ten usable 128-token blocks holds two 620-token prompts; decoding past 640 tokens needs
    an eleventh block, so the scheduler preempts a request and later recomputes it. (The plugin
    gives the paged cache 2 / 5 of the budget: self-extend moves keys in one part.)"""
    method = "self-extend:auto"
    prompts = [prompt(620, 13), prompt(620, 14), prompt(300, 15)]
    out = run_engine(
        tiny_llama,
        method,
        prompts,
        new_tokens=40,
        tmp_path=tmp_path,
        max_model_len=LENGTH,
        block_size=128,
        kv_cache_memory_bytes=28 * 128 * TOKEN_BYTES,  # 11 blocks, one of them vLLM's null block
        disable_log_stats=False,
    )
    assert "error" not in out, out.get("error")
    assert out["preemptions"] > 0
    assert_matches(tiny_llama, method, prompts, out["results"], vanilla_differs=False)


def test_a_second_family_with_qkv_bias(tiny_qwen2, tmp_path):
    prompts = [prompt(3 * TRAINED, 7)]
    out = run_engine(tiny_qwen2, "self-extend:auto", prompts, tmp_path=tmp_path, max_model_len=LENGTH)
    assert "error" not in out, out.get("error")
    assert_matches(tiny_qwen2, "self-extend:auto", prompts, out["results"])


VLLM_CPU_ATTENTION = "vllm.v1.attention.backends.cpu_attn.CPUAttentionBackendImpl"
LONGREACH_CPU_ATTENTION = "longreach.integrations.vllm.cpu_backend.LongReachCPUAttentionImpl"


def test_vanilla_through_the_plugin_is_vllm_itself(tiny_llama, tmp_path):
    """Stock vLLM, the plugin not even loaded, against the plugin with ``vanilla``: its backend
    defers to vLLM's own attention, so the tokens and top-5 log-probabilities are the same."""
    prompts = [prompt(TRAINED - 10, 8), prompt(100, 9)]
    stock = run_engine(tiny_llama, None, prompts, tmp_path=tmp_path, max_model_len=TRAINED, plugin=False)
    assert "error" not in stock, stock.get("error")
    assert not stock["plugin_loaded"] and stock["attention"] == [VLLM_CPU_ATTENTION]
    through = run_engine(tiny_llama, "vanilla", prompts, tmp_path=tmp_path, max_model_len=TRAINED)
    assert through["plugin_loaded"] and through["attention"] == [LONGREACH_CPU_ATTENTION]
    assert through["results"] == stock["results"]
    assert_matches(tiny_llama, None, prompts, stock["results"], vanilla_differs=False)


def test_additional_config_alone_serves_the_method_past_the_trained_length(tiny_llama, tmp_path):
    """``--additional-config '{"longreach_method": ...}'`` with neither LONGREACH_METHOD nor
    VLLM_ALLOW_LONG_MAX_MODEL_LEN set: the plugin lets vLLM past the trained length itself, and
    the engine answers as one started with LONGREACH_METHOD does."""
    prompts = [prompt(3 * TRAINED, 10)]
    method = {"longreach_method": "rerope:auto"}
    configured = run_engine(
        tiny_llama, None, prompts, tmp_path=tmp_path, max_model_len=LENGTH, additional_config=method
    )
    assert "error" not in configured, configured.get("error")
    assert configured["attention"] == [LONGREACH_CPU_ATTENTION]
    from_env = run_engine(tiny_llama, "rerope:auto", prompts, tmp_path=tmp_path, max_model_len=LENGTH)
    assert configured["results"] == from_env["results"]
    assert_matches(tiny_llama, "rerope:auto", prompts, configured["results"])  # the method, not vLLM's own


def test_a_model_without_rope_is_refused_at_start(tiny_gpt2, tmp_path):
    out = run_engine(tiny_gpt2, "rerope:auto", [prompt(10, 0)], tmp_path=tmp_path, max_model_len=LENGTH)
    assert "error" in out
    assert "GPT2LMHeadModel has no rotary embedding (RoPE)" in out["error"]
    assert "Serve a RoPE model (Llama, Mistral, Qwen, Phi-3, ...)" in out["error"]


def test_tensor_parallelism_is_refused_before_any_worker_starts(tiny_llama, tmp_path):
    """Raised by ``LLM(...)`` itself, as vLLM builds its config: without the check, vLLM on this
    machine fails later, binding two CPU workers to one NUMA node."""
    out = run_engine(tiny_llama, "rerope:auto", [prompt(10, 0)], tmp_path=tmp_path, tensor_parallel_size=2)
    assert "error" in out
    assert out["error"].startswith(
        "ValueError: LongReach: tensor_parallel_size 2: the vLLM plugin runs a method with the whole model in one"
    )


def test_pipeline_parallelism_is_refused_as_tensor_parallelism_is():
    """The check run where vLLM builds its config and again at model load (for engines built
    without vLLM's EngineArgs), on config objects: no engine needed."""
    from longreach.integrations.vllm.settings import check_parallelism

    check_parallelism(types.SimpleNamespace(tensor_parallel_size=1, pipeline_parallel_size=1))
    for sizes, named in [
        ((1, 2), "pipeline_parallel_size 2"),
        ((4, 2), "tensor_parallel_size 4, pipeline_parallel_size 2"),
    ]:
        config = types.SimpleNamespace(tensor_parallel_size=sizes[0], pipeline_parallel_size=sizes[1])
        with pytest.raises(ValueError, match=f"LongReach: {named}: .*--tensor-parallel-size 1"):
            check_parallelism(config)


@pytest.mark.parametrize(
    ("method", "length", "message"),
    [
        ("self-extend", LENGTH, "missing group_size, window"),
        ("no-such-method", LENGTH, "unknown method 'no-such-method'"),
        ("self-extend:group_size=2,window=64", LENGTH, r"longer than SelfExtend\(group_size=2, window=64\) covers"),
        ("infllm:auto", LENGTH, "block memory"),
        ("yarn:auto", LENGTH, "rope_parameters"),
    ],
)
def test_bad_settings_stop_the_engine_with_the_reason(tiny_llama, method, length, message, tmp_path):
    out = run_engine(tiny_llama, method, [prompt(10, 0)], tmp_path=tmp_path, max_model_len=length)
    assert "error" in out
    assert pytest.importorskip("re").search(message, out["error"]), out["error"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(tmp_path, serve_args: list[str], vllm_args: list[str], env: dict | None = None):
    """``longreach serve`` in a process of its own, yielding an openai client once ``/health``
    answers; on leaving, the server is stopped as Ctrl-C stops it, and must exit cleanly."""
    import openai

    port = free_port()
    log = tmp_path / "server.log"
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "LONGREACH_METHOD"}
    server = subprocess.Popen(
        [sys.executable, "-m", "longreach.cli", "serve", *serve_args, "--port", str(port), "--", *vllm_args],
        env=env,
        stdout=log.open("w"),  # vLLM logs there, with times
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 600
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(2)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=1800)
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=90) in (0, -signal.SIGINT)


def test_longreach_serve_answers_openai_clients_and_stops_cleanly(tiny_llama, tmp_path):
    import openai

    serve_args = ["--model", str(tiny_llama), "--method", "rerope:auto", "--max-model-len", str(LENGTH)]
    with serving(tmp_path, serve_args, ["--enforce-eager", "--kv-cache-memory-bytes", str(1 << 28)]) as client:
        prompt_ids = prompt(3 * TRAINED, 11)
        completion = client.completions.create(
            model=str(tiny_llama), prompt=as_text(prompt_ids), max_tokens=6, temperature=0
        )
        tokens = as_ids(completion.choices[0].text)
        expected = reference(tiny_llama, "rerope:auto", prompt_ids, tokens)
        assert len(tokens) == 6 and tokens == expected.argmax(-1).tolist()
        stream = client.chat.completions.create(
            model=str(tiny_llama),
            messages=[{"role": "user", "content": as_text(prompt_ids)}],
            max_tokens=6,
            temperature=0,
            stream=True,
        )
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert streamed.split() == completion.choices[0].text.split()
        with pytest.raises(openai.BadRequestError, match="maximum context length"):
            client.completions.create(model=str(tiny_llama), prompt=as_text(prompt(LENGTH + 10, 12)), max_tokens=4)


@pytest.mark.slow
@pytest.mark.model
def test_longreach_serve_finds_a_passkey_at_12k_tokens_with_the_embedded_model(tmp_path):
    """The plugin's end to end, and the suite's slowest test (minutes): ``longreach serve``
    converts the embedded SmolLM2-135M (trained to 8,192 tokens) to safetensors on first use and
    serves rerope:auto at 16k; the openai client sends a 12k-token passkey prompt (LongReach's own,
    as ``longreach passkey`` builds it) as a completion and as a streamed chat, and both find the
    key. The chat continues an assistant message that starts the answer (vLLM's
    ``continue_final_message``): asked to answer on its own, the model paraphrased the question."""
    from transformers import AutoTokenizer

    from longreach.eval.passkey import PASSKEY_NEW_TOKENS, QUESTION, passkey_key, passkey_prompt, score_answer

    cache = tmp_path / "cache"  # empty: serve converts the model, as on a first use
    serve_args = ["--model", "smollm2-135m", "--method", "rerope:auto", "--max-model-len", "16384"]
    # 3 GiB of KV budget: the paged cache's share (2 / 5 with rerope) holds 27k tokens, a 16k request.
    vllm_args = ["--enforce-eager", "--kv-cache-memory-bytes", str(3 << 30)]
    with serving(tmp_path, serve_args, vllm_args, env={**os.environ, "LONGREACH_CACHE": str(cache)}) as client:
        folder = cache / "models" / "smollm2-135m-float32"
        assert (folder / "model.safetensors").is_file()  # what serve converted
        tokenizer = AutoTokenizer.from_pretrained(folder)
        length, depth = 12288, 0.5
        key = passkey_key(0, length, depth, 0)
        ids = passkey_prompt(tokenizer, length, depth, key)
        completion = client.completions.create(
            model="smollm2-135m", prompt=ids, max_tokens=PASSKEY_NEW_TOKENS, temperature=0
        )
        assert completion.usage.prompt_tokens == length
        assert score_answer(completion.choices[0].text, key), completion.choices[0].text

        answer_start = QUESTION.partition("? ")[2]  # "The pass key is"
        asked = tokenizer.decode(ids, skip_special_tokens=True).removesuffix(answer_start).rstrip()
        stream = client.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": asked}, {"role": "assistant", "content": answer_start}],
            max_tokens=PASSKEY_NEW_TOKENS,
            temperature=0,
            stream=True,
            extra_body={"add_generation_prompt": False, "continue_final_message": True},
        )
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert score_answer(streamed, key), streamed


def test_longreach_serve_refuses_settings_short_of_the_length_before_starting_vllm(tiny_llama):
    done = subprocess.run(
        [sys.executable, "-m", "longreach.cli", "serve", "--model", str(tiny_llama)]
        + ["--method", "self-extend:group_size=2,window=64", "--max-model-len", str(LENGTH)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "longer than SelfExtend(group_size=2, window=64) covers" in done.stderr


def test_other_platforms_refuse_a_method_instead_of_ignoring_it(monkeypatch):
    """Only the CPU and CUDA backends are overridden: elsewhere a method must stop vLLM."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.platforms import current_platform
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from longreach.integrations.vllm import plugin

    monkeypatch.setattr(type(current_platform), "is_cpu", lambda self: False)
    monkeypatch.setattr(GPUModelRunner, "load_model", GPUModelRunner.load_model)  # restored afterwards
    monkeypatch.setattr(EngineArgs, "create_engine_config", EngineArgs.create_engine_config)
    monkeypatch.setenv("LONGREACH_METHOD", "rerope:auto")
    with pytest.raises(ValueError, match="not on cpu"):
        plugin.install.__wrapped__()
    monkeypatch.delenv("LONGREACH_METHOD")
    plugin.install.__wrapped__()  # no method in the environment: the model load checks additional_config
    runner = GPUModelRunner.__new__(GPUModelRunner)
    runner.vllm_config = types.SimpleNamespace(
        additional_config={"longreach_method": "rerope:auto"},
        model_config=types.SimpleNamespace(
            hf_config=transformers.LlamaConfig(max_position_embeddings=TRAINED), max_model_len=LENGTH
        ),
    )
    with pytest.raises(ValueError, match="not on cpu"):
        runner.load_model()


def test_on_cuda_the_flash_attention_backend_is_replaced(monkeypatch):
    """The CUDA wiring, checked without a GPU: FLASH_ATTN resolves to LongReach's subclass, whose
    metadata turns CUDA graphs off with a method, and the GPU runner and worker are hooked."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.platforms import current_platform
    from vllm.v1.attention.backend import AttentionCGSupport
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.gpu_worker import Worker

    from longreach.integrations.vllm import plugin
    from longreach.integrations.vllm.cuda_backend import LongReachFlashAttentionBackend, LongReachFlashAttentionImpl

    for cls, name in ((GPUModelRunner, "load_model"), (GPUModelRunner, "_update_states")):
        monkeypatch.setattr(cls, name, getattr(cls, name))
    monkeypatch.setattr(Worker, "determine_available_memory", Worker.determine_available_memory)
    monkeypatch.setattr(EngineArgs, "create_engine_config", EngineArgs.create_engine_config)
    monkeypatch.setattr(type(current_platform), "is_cpu", lambda self: False)
    monkeypatch.setattr(type(current_platform), "is_cuda", lambda self: True)
    monkeypatch.setenv("LONGREACH_METHOD", "rerope:auto")
    registry = __import__("vllm.v1.attention.backends.registry", fromlist=["_ATTN_OVERRIDES"])
    overrides = getattr(registry, "_ATTN_OVERRIDES", None)
    if overrides is not None:
        monkeypatch.setattr(registry, "_ATTN_OVERRIDES", dict(overrides))
    plugin.install.__wrapped__()
    assert AttentionBackendEnum.FLASH_ATTN.get_path().endswith("LongReachFlashAttentionBackend")
    assert LongReachFlashAttentionBackend.get_impl_cls() is LongReachFlashAttentionImpl
    assert getattr(GPUModelRunner.load_model, "_longreach", False)
    config = types.SimpleNamespace(
        additional_config=None,
        model_config=types.SimpleNamespace(
            hf_config=transformers.LlamaConfig(max_position_embeddings=TRAINED), max_model_len=LENGTH
        ),
    )
    builder = LongReachFlashAttentionBackend.get_builder_cls()
    assert builder.get_cudagraph_support(config, None) == AttentionCGSupport.NEVER


def test_serve_sizes_the_kv_cache_unless_the_user_did():
    """vLLM's CPU default reserves 92% of the machine and refuses to start when less is free."""
    from longreach.cli.commands import _kv_cache_default

    flag, size = _kv_cache_default([], {})
    assert flag == "--kv-cache-memory-bytes" and int(size) > 0
    assert _kv_cache_default(["--kv-cache-memory-bytes", "1000"], {}) == []
    assert _kv_cache_default(["--gpu-memory-utilization=0.5"], {}) == []
    assert _kv_cache_default([], {"VLLM_CPU_KVCACHE_SPACE": "4"}) == []
