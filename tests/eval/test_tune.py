"""longreach tune on a tiny random model: it ranks the candidates it measured, stays within its
budget, resumes without measuring again, refuses a budget too small for one cell, and its
recommendation is a spec extend accepts."""

import json

import pytest
import transformers

import longreach
import longreach.eval.compare as compare
from longreach.cli import main
from longreach.eval.tune import (
    Candidate,
    candidate_specs,
    halving,
    informative_first,
    next_round,
    parse_budget,
    planned_cells,
    reason_for,
    tune,
)
from longreach.methods import method_for
from longreach.methods.recommend import TUNE_RECORD
from longreach.models.config import model_identity

TARGET = 500
CANDIDATES = ["rerope:auto", "self-extend:auto", "string:auto"]  # string covers at most 480 on a 256 model
GENERATE_CELL = compare._generate_cell


@pytest.fixture
def tiny(tiny_model_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, transformers.AutoTokenizer.from_pretrained(tiny_model_dir)


def generated(monkeypatch) -> list[int]:
    calls = []

    def generate_cell(*args, **kwargs):
        calls.append(1)
        return GENERATE_CELL(*args, **kwargs)

    monkeypatch.setattr(compare, "_generate_cell", generate_cell)
    return calls


def test_tune_ranks_what_it_measured_and_resumes(tiny, novel, tmp_path, monkeypatch):
    model, tokenizer = tiny
    calls = generated(monkeypatch)
    settings = dict(texts=[novel], candidates=CANDIDATES, depths=(0.3, 0.7), out=tmp_path, model_name="tiny")
    result = tune(model, tokenizer, TARGET, budget="10m", **settings)
    assert result.complete and result.seconds < 600
    assert {c.spec for c in result.ranking} == {"rerope:auto", "self-extend:auto"}
    assert len(result.skipped) == 1 and result.skipped[0].startswith("string:auto")
    for candidate in result.ranking:  # two facts in the text and one multi-key needle each, and a perplexity
        assert candidate.needles == 3 and candidate.perplexity is not None
    shares = [c.share for c in result.ranking]
    assert shares == sorted(shares, reverse=True)
    assert len(calls) == 6
    record = json.loads((tmp_path / TUNE_RECORD).read_text())
    assert record["recommended"] == result.recommended and record["target_length"] == TARGET
    # The recommendation is the winner's settings at the target length, and extend takes it.
    assert result.recommended == result.ranking[0].settings
    longreach.extend(model, result.recommended)
    assert longreach.current_method(model).spec() == result.recommended
    longreach.restore(model)
    # A rerun measures nothing again and ranks the same.
    again = tune(model, tokenizer, TARGET, budget="10m", **settings)
    assert len(calls) == 6 and again.ranking == result.ranking


def test_a_budget_ends_the_run_early_and_a_rerun_goes_on(tiny, novel, tmp_path, monkeypatch):
    """With a clock that moves 10 s per look (a cell then takes 20 s: a look before it, one after),
    a 75 s budget holds three cells: each candidate's first needle, then the first perplexity; the
    rerun measures the rest and nothing twice."""
    model, tokenizer = tiny
    calls = generated(monkeypatch)
    clock = iter(range(0, 10_000, 10))
    monkeypatch.setattr("longreach.eval.tune._now", lambda: float(next(clock)))
    settings = dict(texts=[novel], candidates=CANDIDATES[:2], depths=(0.3, 0.7), out=tmp_path, model_name="tiny")
    first = tune(model, tokenizer, TARGET, budget=75, **settings)
    assert not first.complete and len(calls) == 2
    assert [c.needles for c in first.ranking] == [1, 1]  # both compared on the same first round
    assert [c.perplexity is not None for c in first.ranking].count(True) == 1
    monkeypatch.undo()
    calls = generated(monkeypatch)
    second = tune(model, tokenizer, TARGET, budget="10m", **settings)
    assert second.complete and len(calls) == 4  # only what was missing
    assert all(c.needles == 3 and c.perplexity is not None for c in second.ranking)


def test_a_budget_too_small_for_one_cell_is_refused(tiny, tmp_path):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="cannot hold one cell"):
        tune(model, tokenizer, TARGET, budget=1e-6, candidates=CANDIDATES[:1], out=tmp_path)
    assert not (tmp_path / "results.jsonl").exists()


def test_budgets_and_candidates():
    assert parse_budget("90s") == 90 and parse_budget("2m") == 120 and parse_budget("0.5h") == 1800
    for bad in ("soon", "-3m", "0"):
        with pytest.raises(ValueError, match="budget"):
            parse_budget(bad)
    assert candidate_specs(4096, 8192) == ["vanilla", "string:auto"]
    assert candidate_specs(16384, 8192, sliding_window=4096) == ["infllm:auto", "vanilla"]
    wide = candidate_specs(32768, 8192)[-1]
    assert longreach.parse_method(wide).max_length(8192) >= 32768


def test_informative_first_interleaves_the_candidates():
    work = [compare.Work(m, 10, sample=f"{m}{i}") for m in "ab" for i in range(3)]
    work += [compare.Work(m, 10) for m in "ab"]  # perplexity runs
    order = [(w.method, w.sample) for w in informative_first(work)]
    assert order == [
        ("a", "a0"),
        ("b", "b0"),
        ("a", None),
        ("b", None),
        ("a", "a1"),
        ("b", "b1"),
        ("a", "a2"),
        ("b", "b2"),
    ]


def test_successive_halving_gives_the_rest_of_the_budget_to_the_better_half(tiny, novel, tmp_path, monkeypatch):
    """Four candidates, three needles each: all four get a needle and a perplexity, then the better
    two (by that round) get the other needles; the ranking puts them first."""
    model, tokenizer = tiny
    calls = generated(monkeypatch)
    specs = ["rerope:auto", "self-extend:auto", "leaky-rerope:auto", "dual-chunk:auto"]
    settings = dict(texts=[novel], candidates=specs, depths=(0.3, 0.7), out=tmp_path, model_name="tiny")
    result = tune(model, tokenizer, TARGET, budget="10m", **settings)
    assert result.complete and len(calls) == 4 + 2 + 2 == planned_cells(4, 3) - 4
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    first_round = {c.spec: c for c in rank_of(records[:8], specs)}  # four needles, four perplexities
    finalists = [c.spec for c in result.ranking[:2]]
    assert finalists == [c for c in first_round][:2]
    assert [c.needles for c in result.ranking] == [3, 3, 1, 1]
    assert all(c.perplexity is not None for c in result.ranking)
    again = tune(model, tokenizer, TARGET, budget="10m", **settings)  # replayed from the records
    assert len(calls) == 8 and again.ranking == result.ranking


def rank_of(records, specs):
    from longreach.eval.tune import rank

    return rank(records, specs, TARGET, 0)


def test_halving_keeps_the_better_half_of_each_finished_round():
    def needle(method, score):
        return {"task": "niah-natural", "method": method, "length": 100, "seed": 0, "score": score}

    def ppl(method, value):
        return {"task": "ppl", "method": method, "length": 100, "seed": 0, "perplexity": value}

    records = [needle("a", 1), needle("b", 0), needle("c", 1), ppl("a", 10), ppl("b", 9)]
    assert halving(records, "abc", 100, 0) == [["a", "b", "c"]]  # c has no perplexity yet: round 1 not over
    records.append(ppl("c", 8))
    # Found first; as many found: as listed (the rule's choice leads the grid), whatever the perplexity.
    assert halving(records, "abc", 100, 0) == [["a", "c"], ["b"]]
    assert halving(records, "cba", 100, 0) == [["c", "a"], ["b"]]
    assert planned_cells(3, 2) == 3 + 2 + 3 and planned_cells(1, 4) == 5


def test_the_reason_says_when_the_winner_only_won_a_tie():
    tied = [Candidate("a", "a", 1, 1, 30.0), Candidate("b", "b", 1, 1, 20.0), Candidate("c", "c", 0, 1, 10.0)]
    reason = reason_for(tied, 100)
    assert reason.startswith("1 of 1 needles found at 100 tokens, perplexity 30.00; next b 1/1, c 0/1")
    assert "1 more found as large a share, so it won as listed first" in reason and "--budget" in reason
    assert "listed first" not in reason_for([tied[0], tied[2]], 100)
    assert "the default grid" in reason and "the default grid" not in reason_for(tied, 100, default_grid=False)


def test_a_round_is_each_method_s_next_needle_then_the_missing_perplexities():
    work = [compare.Work(m, 10, sample=f"{m}{i}") for m in "ab" for i in range(3)]
    work += [compare.Work("b", 10)]
    assert [(w.method, w.sample) for w in next_round(work)] == [("a", "a0"), ("b", "b0"), ("b", None)]


def test_the_command_prints_the_ranking_and_writes_the_record(tiny_model_dir, novel, tmp_path, capsys, monkeypatch):
    argv = ["tune", "--model", str(tiny_model_dir), "--target-length", str(TARGET), "--budget", "10m"]
    argv += ["--method", "self-extend:auto", "--depths", "0.5", "--text", str(novel), "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "longreach tune" in out and "recommended: self-extend:" in out
    assert json.loads((tmp_path / TUNE_RECORD).read_text())["ranking"][0]["spec"] == "self-extend:auto"
    assert main([*argv[:6], "soon"]) == 2
    # Without --out the record goes where `auto` looks: results/tune/MODEL-LENGTH.
    monkeypatch.chdir(tmp_path)
    assert main(argv[:-2]) == 0
    assert (tmp_path / "results" / "tune" / f"{tiny_model_dir.name}-{TARGET}" / TUNE_RECORD).is_file()
    # Every command takes --method auto: here the tuned choice (the rule would say rerope), read
    # from the results folder.
    monkeypatch.setenv("LONGREACH_RESULTS", str(tmp_path))
    compare = ["compare", "--model", str(tiny_model_dir), "--method", "auto", "--tasks", "passkey"]
    assert main([*compare, "--lengths", str(TARGET), "--depths", "0.5", "--out", str(tmp_path / "cmp")]) == 0
    cells = [json.loads(line) for line in (tmp_path / "cmp" / "results.jsonl").read_text().splitlines()]
    assert [c["settings"] for c in cells] == [json.loads((tmp_path / TUNE_RECORD).read_text())["recommended"]]


def test_auto_is_the_tuned_choice_for_this_model_and_the_rule_elsewhere(tiny, novel, tmp_path, monkeypatch):
    model, tokenizer = tiny
    monkeypatch.setenv("LONGREACH_RESULTS", str(tmp_path))
    rule = longreach.model_info(model, TARGET).recommended
    assert rule.auto == "rerope:auto" and "docs/results.md" in rule.reason
    result = tune(
        model,
        tokenizer,
        TARGET,
        budget="10m",
        texts=[novel],
        candidates=["dual-chunk:auto", "self-extend:auto"],
        depths=(0.5,),
        out=tmp_path / "tune-500",
        model_name="tiny",
    )
    tuned = longreach.model_info(model, TARGET).recommended
    assert tuned.auto == result.ranking[0].spec and tuned.spec == result.recommended
    assert "longreach tune" in tuned.reason
    longreach.extend(model, "auto", target_length=TARGET)
    assert longreach.current_method(model).spec() == result.recommended
    longreach.restore(model)
    # Past the tuned length, and for another model, `auto` is the rule.
    assert method_for("auto", 2 * TARGET, 256, model=model_identity(model.config)).spec().startswith("rerope:")
    assert method_for("auto", TARGET, 256, model="another/model").spec().startswith("rerope:")
