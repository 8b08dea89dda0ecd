import json

import pytest
import torch

from longreach.eval.legacy import read_legacy, read_results
from longreach.eval.passkey import (
    INTRO,
    NEEDLE,
    PROMPT_VERSION,
    PasskeyTask,
    greedy_answer,
    passkey_key,
    passkey_prompt,
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


def test_a_filler_of_ones_own_is_a_variant_of_the_task(smollm_tokenizer):
    task = PasskeyTask(depths=(0.5,), filler="It was a dark and stormy night.")
    [sample] = task.samples(smollm_tokenizer, 300, 1, seed=0)
    assert "stormy night" in smollm_tokenizer.decode(sample.prompt_ids) and task.variant.startswith("filler:")
    assert PasskeyTask().variant is None


def test_records_of_the_old_passkey_command_read_as_compare_records(tmp_path):
    old = {
        "model": "m",
        "method": "self-extend:auto",
        "length": 4096,
        "depth": 0.5,
        "sample": 0,
        "seed": 0,
        "key": "12345",
        "answer": "12345. Remember",
        "correct": True,
        "seconds": 2.0,
        "settings": "self-extend:group_size=1,window=2048",
    }
    path = tmp_path / "passkey.jsonl"
    unversioned = {k: v for k, v in old.items() if k != "settings"}
    path.write_text(json.dumps({**old, "prompt_version": PROMPT_VERSION}) + "\n" + json.dumps(unversioned) + "\n{tor")
    assert [r.prompt_version for r in read_results(path, prompt_version=None)] == [PROMPT_VERSION, 1]
    new, older = read_legacy(path)
    assert new["task"] == "passkey" and new["score"] == 1.0 and new["expected"] == ["12345"]
    assert new["settings"] == old["settings"] and new["prompt_version"] == PROMPT_VERSION
    assert older["settings"] == "self-extend:auto" and older["prompt_version"] == 1


@pytest.mark.model
def test_embedded_model_answers_a_1k_passkey(smollm):
    model, tokenizer = smollm
    task = PasskeyTask(depths=(0.3, 0.7))
    answers = [
        (s, greedy_answer(model, tokenizer, s.prompt_ids, s.max_new_tokens))
        for s in task.samples(tokenizer, 1024, 1, 0)
    ]
    assert all(task.score(s, answer) == 1.0 for s, answer in answers), [(s.expected, a) for s, a in answers]


@pytest.mark.model
def test_embedded_model_self_extend_answers_a_1k_passkey(smollm):
    import longreach

    model, tokenizer = smollm
    task = PasskeyTask(depths=(0.5,))
    longreach.extend(model, longreach.SelfExtend(group_size=4, window=256))
    try:
        [sample] = task.samples(tokenizer, 1024, 1, 0)
        answer = greedy_answer(model, tokenizer, sample.prompt_ids, sample.max_new_tokens)
    finally:
        longreach.restore(model)
    assert task.score(sample, answer) == 1.0, (sample.expected, answer)
    assert torch.is_grad_enabled()
