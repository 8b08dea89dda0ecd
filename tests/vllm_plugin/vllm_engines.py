"""Tiny models vLLM can load and an engine per process, for the plugin's tests."""

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import torch
import transformers

TRAINED = 256
#: KV cache bytes per token of the tiny models: 2 layers x (key, value) x 2 KV heads x 32 dims x 4 bytes.
TOKEN_BYTES = 2 * 2 * 2 * 32 * 4
JOB = Path(__file__).with_name("engine_job.py")


def save_tiny(folder: Path, family: str) -> Path:
    """A tiny random model vLLM's CPU attention takes (head size 32), trained length 256."""
    common = dict(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TRAINED,
        bos_token_id=1,
        eos_token_id=2,
        rope_theta=500.0,
    )
    config = getattr(transformers, f"{family}Config")(**common)
    torch.manual_seed(0)
    model = getattr(transformers, f"{family}ForCausalLM")(config).eval()
    model.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def save_tiny_gpt2(folder: Path) -> Path:
    """A tiny random GPT-2 (learned absolute positions, no RoPE) of the same shape, trained length 256."""
    config = transformers.GPT2Config(
        vocab_size=512, n_embd=128, n_layer=2, n_head=4, n_positions=TRAINED, bos_token_id=1, eos_token_id=2
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def word_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A tokenizer of the tiny vocabulary: token ``i`` is the word ``w{i}``, words split on spaces,
    with a chat template that joins the messages' text, so a server can take text and chats."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = Tokenizer(models.WordLevel({word(i): i for i in range(512)}, unk_token=word(0)))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    words.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token=word(0), bos_token=word(1), eos_token=word(2)
    )
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    return tokenizer


SPECIAL = ("<unk>", "<s>", "</s>")


def word(i: int) -> str:
    """Token ``i`` as a word (special tokens must not be prefixes of other words)."""
    return SPECIAL[i] if i < len(SPECIAL) else f"w{i}"


def as_text(ids: list[int]) -> str:
    return " ".join(word(i) for i in ids)


def as_ids(text: str) -> list[int]:
    ids = {word(i): i for i in range(512)}
    return [ids[w] for w in text.split()]


def run_engine(
    model: Path, method: str | None, *batches, new_tokens: int = 6, tmp_path: Path, plugin: bool = True, **engine
) -> dict:
    """Start one engine with ``method`` (None: no LONGREACH_METHOD) and generate greedily, one batch
    of prompts after another; the results come in the order of the prompts. ``plugin=False`` starts
    stock vLLM: every general plugin installed but LongReach's (``VLLM_PLUGINS`` is vLLM's
    allow-list of them)."""
    job, out = tmp_path / "job.json", tmp_path / "out.json"
    out.unlink(missing_ok=True)
    job.write_text(json.dumps({"model": str(model), "engine": engine, "batches": batches, "new_tokens": new_tokens}))
    # Nothing the test process may hold (an in-process test installs the plugin) reaches the engine.
    env = {k: v for k, v in os.environ.items() if k not in ("LONGREACH_METHOD", "VLLM_ALLOW_LONG_MAX_MODEL_LEN")}
    if method is not None:
        env["LONGREACH_METHOD"] = method
    if not plugin:
        others = [p.name for p in entry_points(group="vllm.general_plugins") if p.name != "longreach"]
        env["VLLM_PLUGINS"] = ",".join(others)  # "" matches no plugin: vLLM splits it into [""]
    done = subprocess.run([sys.executable, str(JOB), str(job), str(out)], env=env, capture_output=True, text=True)
    if not out.exists():
        raise AssertionError(f"the engine process failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())
