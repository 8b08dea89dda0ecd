import json

import pytest
import torch
from conftest import tiny_model

from longreach.eval.passkey import (
    INTRO,
    NEEDLE,
    PROMPT_VERSION,
    accuracy_table,
    passkey_key,
    passkey_prompt,
    read_results,
    run_passkey,
    score_answer,
)


@pytest.mark.parametrize("length", [200, 1000, 4096])
@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_prompt_has_exact_length_and_needle_at_depth(smollm_tokenizer, length, depth):
    tok = smollm_tokenizer
    ids = passkey_prompt(tok, length, depth, "48213")
    assert len(ids) == length
    text = tok.decode(ids)
    needle = NEEDLE.format(key="48213")
    assert text.count("48213") == 2 and f"\n{needle}\n" in text  # the reference layout: a line of its own
    assert text.startswith(INTRO + "\nThe grass is green.") or depth == 0.0
    assert tok(text).input_ids == ids  # what the prompt's own text tokenizes to
    where = text.index(needle) / len(text)
    assert abs(where - depth) < 0.1 + 150 / length  # within a filler unit or two of the depth
    assert text.rstrip().endswith("The pass key is")


def test_prompt_too_short_and_bad_depth_are_errors(smollm_tokenizer):
    with pytest.raises(ValueError, match="at least"):
        passkey_prompt(smollm_tokenizer, 20, 0.5, "12345")
    with pytest.raises(ValueError, match="depth"):
        passkey_prompt(smollm_tokenizer, 500, 1.5, "12345")


def test_score_accepts_the_key_and_rejects_others():
    assert score_answer(" 48213. Remember", "48213")
    assert score_answer("48213", "48213")
    assert not score_answer("4821", "48213")
    assert not score_answer("482130", "48213")
    assert not score_answer("the key is unknown", "48213")
    assert not score_answer("12345 48213", "48213")


def test_keys_are_deterministic_and_vary():
    assert passkey_key(0, 4096, 0.5, 0) == passkey_key(0, 4096, 0.5, 0)
    assert len({passkey_key(0, 4096, 0.5, s) for s in range(20)}) > 15


def test_results_stream_to_jsonl_and_a_rerun_resumes(tmp_path, smollm_tokenizer):
    model = tiny_model("llama", vocab_size=len(smollm_tokenizer), max_position_embeddings=512)
    calls = []
    original = model.generate

    def counting_generate(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.generate = counting_generate
    out = tmp_path / "passkey.jsonl"
    settings = dict(method="vanilla", lengths=[160, 200], depths=[0.5], samples=2, out=out, max_new_tokens=3)
    first = run_passkey(model, smollm_tokenizer, **settings)
    assert len(calls) == 4 and len(first) == 4
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and {json.loads(line)["length"] for line in lines} == {160, 200}
    # Interrupted run: drop the last result and tear the line before it.
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])
    again = run_passkey(model, smollm_tokenizer, **settings)
    assert len(calls) == 4 + 2
    assert [r.key for r in again] == [r.key for r in first]
    assert len(read_results(out)) == 4
    table = accuracy_table(again)
    assert table["vanilla"][160][1] == 2 and table["vanilla"][200][1] == 2
    # Another model's results in the same file are not taken for this one's; a sample recorded
    # twice counts once.
    run_passkey(model, smollm_tokenizer, **settings, model_name="another")
    assert len(calls) == 6 + 4
    assert len(read_results(out, model="another")) == 4
    assert accuracy_table(read_results(out, model="") + again)["vanilla"] == table["vanilla"]
    # Records of other settings under the same label (a NAME:auto that now resolves otherwise)
    # are not taken for these: the samples run again, and each still counts once.
    rerun = run_passkey(model, smollm_tokenizer, **settings, settings="vanilla:other")
    assert len(calls) == 10 + 4 and all(r.settings == "vanilla:other" for r in rerun)
    assert accuracy_table(read_results(out, model=""))["vanilla"] == table["vanilla"]


def test_samples_recorded_with_older_prompts_are_asked_again(tmp_path, smollm_tokenizer):
    model = tiny_model("llama", vocab_size=len(smollm_tokenizer), max_position_embeddings=512)
    out = tmp_path / "passkey.jsonl"
    settings = dict(method="vanilla", lengths=[160], depths=[0.5], samples=2, out=out, max_new_tokens=2)
    first = run_passkey(model, smollm_tokenizer, **settings)
    assert all(r.prompt_version == PROMPT_VERSION for r in first)
    # As records from before prompt versions: no version, so version 1.
    legacy = [
        {k: v for k, v in json.loads(line).items() if k != "prompt_version"} for line in out.read_text().splitlines()
    ]
    out.write_text("".join(json.dumps(r) + "\n" for r in legacy))
    assert read_results(out) == [] and len(read_results(out, prompt_version=1)) == 2
    assert len(read_results(out, prompt_version=None)) == 2
    again = run_passkey(model, smollm_tokenizer, **settings)
    assert [r.key for r in again] == [r.key for r in first] and len(out.read_text().splitlines()) == 4
    assert read_results(out) == again


@pytest.mark.model
def test_embedded_model_answers_a_1k_passkey(smollm):
    model, tokenizer = smollm
    results = run_passkey(model, tokenizer, method="vanilla", lengths=[1024], depths=[0.3, 0.7], samples=1)
    assert all(r.correct for r in results), [(r.key, r.answer) for r in results]


@pytest.mark.model
def test_embedded_model_self_extend_answers_a_1k_passkey(smollm):
    import longreach

    model, tokenizer = smollm
    longreach.extend(model, longreach.SelfExtend(group_size=4, window=256))
    try:
        results = run_passkey(model, tokenizer, method="self-extend", lengths=[1024], depths=[0.5], samples=1)
    finally:
        longreach.restore(model)
    assert all(r.correct for r in results), [(r.key, r.answer) for r in results]
    assert torch.is_grad_enabled()
