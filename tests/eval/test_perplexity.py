"""Perplexity by position: chunked losses equal one forward, prefixes equal shorter runs, and the
perplexity preset reads each method once (each length for length-dependent methods)."""

import json
import math

import pytest
import torch
from conftest import tiny_model

import longreach
import longreach.eval.compare as compare
from longreach.eval.evaluate import evaluate, perplexity_evaluation
from longreach.eval.perplexity import bucket_losses, bucket_perplexity, token_losses


class CharTokenizer:
    """One token per character (ids 3..127): enough text for long tiny-model inputs."""

    def __call__(self, text, return_tensors=None):
        ids = torch.tensor([[3 + ord(c) % 125 for c in text]])
        return type("Encoded", (), {"input_ids": ids})()


@pytest.fixture
def novel(tmp_path):
    path = tmp_path / "novel.txt"
    gen = torch.Generator().manual_seed(0)
    path.write_text("".join(chr(97 + int(i)) for i in torch.randint(0, 26, (400,), generator=gen)))
    return path


def test_chunked_losses_equal_one_forward():
    model = longreach.extend(tiny_model("llama", max_position_embeddings=32), longreach.SelfExtend(4, 6))
    ids = torch.randint(3, 128, (1, 90))
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
    expected = -log_probs.gather(1, ids[0, 1:, None]).squeeze(1)
    torch.testing.assert_close(token_losses(model, ids, chunk_size=16), expected, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="n >= 2"):
        token_losses(model, ids[:, :1])


def test_a_prefix_of_a_long_run_scores_as_the_short_input():
    model = longreach.extend(tiny_model("llama", max_position_embeddings=32), longreach.DualChunk(12, 3))
    ids = torch.randint(3, 128, (1, 201))
    torch.testing.assert_close(token_losses(model, ids)[:64], token_losses(model, ids[:, :65]), atol=1e-5, rtol=1e-5)


def test_the_preset_reads_each_method_once_and_length_dependent_ones_per_length(novel, tmp_path, monkeypatch):
    model = tiny_model("llama", max_position_embeddings=32)
    runs = []
    real = compare.token_losses

    def counting(model, ids, *args, **kwargs):
        runs.append(ids.shape[1] - 1)
        return real(model, ids, *args, **kwargs)

    monkeypatch.setattr(compare, "token_losses", counting)
    chunked, dynamic = longreach.DualChunk(12, 3).spec(), "dynamic-ntk:factor=2"
    evaluation = perplexity_evaluation([chunked, dynamic, "self-extend:auto"], [64, 200], texts=[novel])
    out = tmp_path / "ppl"
    found = evaluate(model, CharTokenizer(), evaluation, out, model_name="tiny")
    assert runs == [200, 64, 200, 200]  # dual-chunk once, dynamic NTK per length, self-extend:auto once
    ppl = {(r["method"], r["length"]): r for r in found}
    assert len(ppl) == 6 and all(r["task"] == "ppl" and r["texts"] == ["novel.txt"] for r in found)
    # NAME:auto reads the 64-token prefix with the settings it picks for 200 tokens.
    assert ppl["self-extend:auto", 64]["settings"] == ppl["self-extend:auto", 200]["settings"] != "vanilla"
    alone = token_losses(
        longreach.extend(model, longreach.DualChunk(12, 3)), CharTokenizer()(novel.read_text()).input_ids[:, :65]
    )
    assert ppl[chunked, 64]["perplexity"] == pytest.approx(math.exp(float(alone.mean())), rel=1e-4)
    summary = json.loads((out / "perplexity.json").read_text())
    assert set(summary["perplexity"]) == {chunked, dynamic, "self-extend:auto"} and summary["text"] == "novel.txt"
    assert (out / "perplexity.png").read_bytes()[:4] == b"\x89PNG" and (out / "report.md").is_file()
    runs.clear()
    assert len(evaluate(model, CharTokenizer(), evaluation, out, model_name="tiny")) == 6 and runs == []  # resumed


def test_bucket_losses_and_perplexity():
    losses = torch.tensor([0.0, 0.0, math.log(4.0), math.log(4.0), math.log(2.0)])
    assert bucket_perplexity(losses, bucket=2) == pytest.approx([1.0, 4.0, 2.0])
    assert bucket_losses(losses, bucket=2) == pytest.approx([0.0, math.log(4.0), math.log(2.0)])
