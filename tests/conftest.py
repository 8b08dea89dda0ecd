"""Tiny random-weight models of several RoPE families, built from configs (no downloads)."""

from __future__ import annotations

import pytest
import torch
import transformers

from longreach.integrations.transformers.forward_args import cache_kwargs

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# family -> (config class, model class, extra config). Partial rotary and interleaved layouts
# are covered by phi (partial), cohere (interleaved) and glm (both).
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    # One full layer, then one with a 12-token sliding window (transformers' DynamicSlidingWindowLayer).
    "qwen2-windowed": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {"use_sliding_window": True, "sliding_window": 12, "max_window_layers": 1},
    ),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"sliding_window": None}),
    # A RoPE per layer type: local layers (window 12, base 10k), global ones (base 1M, linear x2).
    # Attention logit soft-capping at 1.0, with weights large enough for it to bite; eager attention.
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {
            "head_dim": 16,
            "attn_logit_softcapping": 1.0,
            "initializer_range": 0.2,
            "sliding_window": 12,
            "_attn_implementation": "eager",
        },
    ),
    # RoPE on the sliding-window layer only (Cohere2's rule: its global layers are NoPE).
    "cohere2": (
        "Cohere2Config",
        "Cohere2ForCausalLM",
        {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 12},
    ),
    # NoPE: the second layer applies no RoPE.
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", {"no_rope_layers": [1, 0]}),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {
            "head_dim": 16,
            "layer_types": ["sliding_attention", "full_attention"],
            "sliding_window": 12,
            "rope_parameters": {
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
            },
        },
    ),
    "phi": ("PhiConfig", "PhiForCausalLM", {"partial_rotary_factor": 0.5}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {}),
    "glm": ("GlmConfig", "GlmForCausalLM", {"head_dim": 16, "partial_rotary_factor": 0.5}),
}


def tiny_model(family: str = "llama", seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    config_name, model_name, extra = FAMILIES[family]
    settings = {**COMMON, **extra, **overrides}
    implementation = settings.pop("_attn_implementation", "sdpa")
    config = getattr(transformers, config_name)(**settings)
    config._attn_implementation = implementation
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    return model


def attention_inputs(case: dict) -> dict:
    """Random unrotated q, k, v and positions for an engine case (batch, kv_heads, group,
    head_dim, rotary_fraction, n_key, n_query, pad, seed): the same case gives the same tensors."""
    gen = torch.Generator().manual_seed(case["seed"])
    b, hkv, g, d = case["batch"], case["kv_heads"], case["group"], case["head_dim"]
    rot = int(d * case["rotary_fraction"])
    key_positions = torch.arange(case["n_key"]) - case["pad"]
    return dict(
        inv_freq=1.0 / (500 ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot)),
        raw_q=torch.randn(b, hkv * g, case["n_query"], d, generator=gen),
        raw_k=torch.randn(b, hkv, case["n_key"], d, generator=gen),
        value=torch.randn(b, hkv, case["n_key"], d, generator=gen),
        key_positions=key_positions,
        query_positions=key_positions[case["n_key"] - case["n_query"] :],
        scale=d**-0.5,
        generator=gen,
    )


def logits(model, ids, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, **kwargs).logits


def logits_in_pieces(model, ids, spans) -> torch.Tensor:
    """Logits of ``ids`` read as the (start, stop) ``spans``, in order, through one cache: a
    chunked prefill and token-by-token decoding, to compare with reading ``ids`` at once."""
    cache = transformers.DynamicCache(config=model.config)
    return torch.cat(
        [logits(model, ids[:, a:b], **cache_kwargs(model, cache), use_cache=True) for a, b in spans], dim=1
    )


def left_pad(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows of different lengths as one left-padded batch: (ids, attention mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row) :] = torch.tensor(row)
        mask[b, width - len(row) :] = 1
    return ids, mask


@pytest.fixture
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M and its tokenizer (installed by `make test`)."""
    import longreach

    return longreach.load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm_tokenizer(smollm):
    return smollm[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm_tokenizer):
    """A tiny random Llama (trained length 256) saved with the SmolLM2 tokenizer, for commands
    that load a model by path."""
    folder = tmp_path_factory.mktemp("tiny")
    model = tiny_model("llama", vocab_size=len(smollm_tokenizer), max_position_embeddings=256)
    model.save_pretrained(folder)
    smollm_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def novel(tmp_path_factory):
    """A plain-text 'novel' of numbered sentences (about 4,000 tokens), for haystacks and perplexity."""
    path = tmp_path_factory.mktemp("text") / "novel.txt"
    sentences = [f"Chapter {n}. The captain walked to the harbour and counted {n * 7} ships. " for n in range(200)]
    path.write_text("".join(sentences))
    return path
