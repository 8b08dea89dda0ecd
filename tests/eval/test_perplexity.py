"""Perplexity by position: chunked losses equal one forward, prefixes equal shorter runs."""

import math

import pytest
import torch
from conftest import tiny_model

import longreach
from longreach.eval.perplexity import bucket_perplexity, run_perplexity, token_losses


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
    torch.testing.assert_close(token_losses(model, ids, chunk=16), expected, atol=1e-4, rtol=1e-5)


def test_shorter_lengths_come_from_the_longest_run_exactly(novel, tmp_path):
    model = longreach.extend(tiny_model("llama", max_position_embeddings=32), longreach.DualChunk(12, 3))
    out = tmp_path / "ppl.jsonl"
    [long_run] = run_perplexity(
        model, CharTokenizer(), method="dual-chunk", text_path=novel, lengths=[64, 200], out=out
    )
    [short_run] = run_perplexity(model, CharTokenizer(), method="dual-chunk-alone", text_path=novel, lengths=[64])
    assert long_run.perplexity["64"] == pytest.approx(short_run.perplexity["64"], rel=1e-5)
    assert len(long_run.bucket_perplexity) == 1  # 200 predictions in one 1024 bucket
    # A rerun resumes from the JSON lines file without computing again.
    again = run_perplexity(None, CharTokenizer(), method="dual-chunk", text_path=novel, lengths=[64, 200], out=out)
    assert again == [long_run]
    # Another model's run in the same file is not taken for this one's: it is computed.
    [other] = run_perplexity(
        model, CharTokenizer(), method="dual-chunk", text_path=novel, lengths=[64, 200], out=out, model_name="another"
    )
    assert other.model == "another" and other.perplexity == pytest.approx(long_run.perplexity)
    # A run recorded with other settings under the same label is computed again.
    with pytest.raises(AttributeError):  # no model given: proof that it would compute
        run_perplexity(
            None,
            CharTokenizer(),
            method="dual-chunk",
            settings="dual-chunk:chunk_size=16",
            text_path=novel,
            lengths=[64, 200],
            out=out,
        )


def test_length_dependent_methods_run_each_length(novel):
    model = longreach.extend(tiny_model("llama", max_position_embeddings=32), longreach.RopeScaling("dynamic-ntk", 2.0))
    runs = run_perplexity(
        model, CharTokenizer(), method="dynamic-ntk", text_path=novel, lengths=[64, 200], depends_on_length=True
    )
    assert [r.length for r in runs] == [64, 200]
    assert all(math.isfinite(v) for r in runs for v in r.perplexity.values())


def test_text_too_short_is_a_clear_error(novel):
    with pytest.raises(ValueError, match="fewer than the 1001 needed"):
        run_perplexity(None, CharTokenizer(), method="vanilla", text_path=novel, lengths=[1000])


def test_bucket_perplexity():
    losses = torch.tensor([0.0, 0.0, math.log(4.0), math.log(4.0), math.log(2.0)])
    assert bucket_perplexity(losses, bucket=2) == pytest.approx([1.0, 4.0, 2.0])
