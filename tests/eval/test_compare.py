"""The compare command: the matrix runs once, every cell lands in the JSON lines as it finishes,
an interrupted run resumes with only the missing cells, and the report is rebuilt from the
JSON lines alone."""

import json
import re

import pytest

import longreach.eval.compare as compare
from longreach.cli import main
from longreach.data import DEFAULT_TEXT
from longreach.eval.report import build_tables

METHODS = ["vanilla", "self-extend:group_size=2,window=64"]
TASKS = "passkey,niah,ruler:niah_single_1,ppl"
GENERATE_CELL = compare._generate_cell


def compare_argv(model_dir, out, novel, *, tasks=TASKS, methods=METHODS, lengths="200,400"):
    argv = [
        "compare",
        "--model",
        str(model_dir),
        "--tasks",
        tasks,
        "--lengths",
        lengths,
        "--depths",
        "0.2,0.8",
        "--samples",
        "1",
        "--text",
        str(novel),
        "--out",
        str(out),
    ]
    for spec in methods:
        argv += ["--method", spec]
    return argv


def counting(monkeypatch, fail_after=None):
    """Count generated cells; with ``fail_after``, die like a killed process after that many."""
    calls = []

    def generate_cell(*args, **kwargs):
        if fail_after is not None and len(calls) == fail_after:
            raise RuntimeError("killed")
        calls.append(1)
        return GENERATE_CELL(*args, **kwargs)

    monkeypatch.setattr(compare, "_generate_cell", generate_cell)
    return calls


def records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_interrupted_compare_resumes_with_only_missing_cells_and_writes_the_report(
    tiny_model_dir, tmp_path, novel, monkeypatch, capsys
):
    out = tmp_path / "cmp"
    argv = compare_argv(tiny_model_dir, out, novel)
    # 2 methods x 2 lengths x (passkey at 2 depths + niah at 2 depths + one RULER task) = 20 samples,
    # plus ppl: one run per method at the longest length, recorded for both lengths.
    generative, perplexity = 2 * 2 * (2 + 2 + 1), 2 * 2
    calls = counting(monkeypatch, fail_after=7)
    with pytest.raises(RuntimeError, match="killed"):
        main(argv)
    assert len(records(out)) == 7  # every finished cell was written at once

    calls = counting(monkeypatch)
    assert main(argv) == 0
    assert len(calls) == generative - 7
    found = records(out)
    assert len(found) == generative + perplexity
    cells = {compare.cell_key(r) for r in found}
    assert len(cells) == len(found)  # nothing done twice
    for r in found:
        assert r["model"] == str(tiny_model_dir) and r["seed"] == 0 and r["versions"]["longreach"]
        assert r["method"] in METHODS and r["settings"]
    assert {r["task"] for r in found} == {"passkey", "niah", "ruler:niah_single_1", "ppl"}
    ppl = [r for r in found if r["task"] == "ppl"]
    assert {(r["method"], r["length"]) for r in ppl} == {(m, n) for m in METHODS for n in (200, 400)}
    assert all(len(r["bucket_loss"]) == -(-r["length"] // r["bucket"]) for r in ppl)

    report = (out / "report.md").read_text()
    for title in (
        "## At 400: every task",
        "## passkey: score",
        "## niah: score",
        "## RULER average",
        "## ppl: perplexity",
    ):
        assert title in report
    assert "## Commands" in report and "longreach compare --model" in report
    assert "self-extend:group_size=2,window=64" in report
    for png in ("passkey-heatmap.png", "niah-heatmap.png", "ruler.png", "ppl.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
        assert f"]({png})" in report
    shown = capsys.readouterr().out
    assert "niah: score (%)" in shown and "ppl: perplexity" in shown

    calls = counting(monkeypatch)
    assert main(argv) == 0  # a finished run has nothing left to do
    assert calls == [] and len(records(out)) == len(found)

    # The report is rebuilt from the JSON lines alone.
    (out / "report.md").unlink()
    for png in out.glob("*.png"):
        png.unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == report
    assert (out / "niah-heatmap.png").is_file()


def test_cells_recorded_with_other_settings_are_rerun_and_counted_once(tiny_model_dir, tmp_path, novel, monkeypatch):
    out = tmp_path / "cmp"
    argv = compare_argv(tiny_model_dir, out, novel, tasks="passkey,ppl", lengths="200")
    assert main(argv) == 0
    first = records(out)
    # As an older LongReach would have left them: METHODS[1] resolved to other settings.
    stale = [{**r, "settings": "self-extend:group_size=3,window=64"} if r["method"] == METHODS[1] else r for r in first]
    (out / compare.RESULTS).write_text("".join(json.dumps(r) + "\n" for r in stale))
    calls = counting(monkeypatch)
    assert main(argv) == 0
    assert len(calls) == 2  # METHODS[1]'s two passkey depths; vanilla's cells stand
    rerun = records(out)[len(first) :]
    assert [(r["task"], r["method"], r["settings"]) for r in rerun] == [("passkey", METHODS[1], METHODS[1])] * 2 + [
        ("ppl", METHODS[1], METHODS[1])
    ]
    report = (out / "report.md").read_text()
    assert "_2 samples per cell" in report and "4 samples" not in report  # two depths, each once
    assert "group_size=3" not in report  # nor are the old settings listed as used


def test_cells_asked_with_older_prompts_are_rerun_and_left_out_of_the_report(
    tiny_model_dir, tmp_path, novel, monkeypatch
):
    out = tmp_path / "cmp"
    argv = compare_argv(tiny_model_dir, out, novel, tasks="passkey,niah", methods=["vanilla"], lengths="200")
    assert main(argv) == 0
    first = records(out)
    assert {(r["task"], r["prompt_version"]) for r in first} == {("passkey", 2), ("niah", 1)}
    # Passkey cells as a LongReach before prompt versions left them: unversioned, so version 1.
    old = [{k: v for k, v in r.items() if k != "prompt_version"} for r in first]
    (out / compare.RESULTS).write_text("".join(json.dumps(r) + "\n" for r in old))
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "2 cells recorded with older prompts" in report and "## passkey" not in report and "## niah" in report
    calls = counting(monkeypatch)
    assert main(argv) == 0
    assert len(calls) == 2  # the two passkey depths; niah's prompts are unchanged
    rerun = records(out)[len(old) :]
    assert [(r["task"], r["prompt_version"]) for r in rerun] == [("passkey", 2)] * 2
    report = (out / "report.md").read_text()
    assert "older prompts" not in report and "## passkey" in report


def test_same_seed_gives_the_same_results(tiny_model_dir, tmp_path, novel):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        argv = compare_argv(
            tiny_model_dir, out, novel, tasks="niah,ruler:niah_single_1", methods=METHODS[1:], lengths="300"
        )
        assert main(argv) == 0
        runs.append([{k: v for k, v in r.items() if k != "seconds"} for r in records(out)])
    assert runs[0] == runs[1]


def test_ppl_and_niah_text_read_the_shipped_novel_without_text(tiny_model_dir, tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--model", str(tiny_model_dir), "--tasks", "niah-text,ppl", "--lengths", "200"]
    assert main([*argv, "--depths", "0.5", "--out", str(out)]) == 0
    found = records(out)
    assert {r["task"] for r in found} == {"niah-text", "ppl"}
    assert [r["texts"] for r in found if r["task"] == "ppl"] == [[DEFAULT_TEXT.name]]


def test_ppl_cells_of_another_text_are_read_again(tiny_model_dir, tmp_path, novel):
    out = tmp_path / "cmp"
    argv = ["compare", "--model", str(tiny_model_dir), "--tasks", "ppl", "--lengths", "200", "--out", str(out)]
    assert main(argv) == 0
    assert main([*argv, "--text", str(novel)]) == 0
    assert [r["texts"] for r in records(out)] == [[DEFAULT_TEXT.name], [novel.name]]
    assert main([*argv, "--text", str(novel)]) == 0  # done: nothing new
    assert len(records(out)) == 2


def test_missing_text_and_empty_report_folder_are_errors(tiny_model_dir, tmp_path, capsys):
    argv = [
        "compare",
        "--model",
        str(tiny_model_dir),
        "--tasks",
        "ppl",
        "--text",
        str(tmp_path / "nope.txt"),
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 2
    assert f"text file {tmp_path / 'nope.txt'} does not exist" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "empty does not exist; give the --out folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no results" in capsys.readouterr().err


def test_ppl_text_too_short_for_the_lengths_is_an_error(tiny_model_dir, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("A short text. " * 10)
    argv = [
        "compare",
        "--model",
        str(tiny_model_dir),
        "--tasks",
        "ppl",
        "--text",
        str(short),
        "--lengths",
        "400",
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(
        r"the text \(short.txt\) holds (\d+) tokens: enough for a perplexity at lengths up to \d+, not 400", err
    )
    assert "--text FILE" in err and err.count("\n") == 1


def test_a_folder_with_another_models_results_is_refused(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    foreign = {
        "task": "passkey",
        "method": "vanilla",
        "length": 200,
        "depth": 0.5,
        "sample": 0,
        "seed": 0,
        "model": "some-other-model",
        "score": 1.0,
    }
    (out / "results.jsonl").write_text(json.dumps(foreign) + "\n")
    argv = ["compare", "--model", str(tiny_model_dir), "--tasks", "passkey", "--lengths", "200", "--out", str(out)]
    assert main(argv) == 2
    assert "holds results of another model (some-other-model)" in capsys.readouterr().err
    assert (out / "results.jsonl").read_text() == json.dumps(foreign) + "\n"  # left as it was


def test_a_cell_is_counted_against_the_fullest_cell_of_its_own_length():
    def cells(method, length, n):
        return [
            {
                "task": "niah",
                "method": method,
                "settings": method,
                "length": length,
                "depth": d / 10,
                "sample": 0,
                "score": 1.0,
            }
            for d in range(1, n + 1)
        ]

    # 4k at five depths for both; 16k at three depths, one method not finished.
    records = cells("a", 4096, 5) + cells("b", 4096, 5) + cells("a", 16384, 3) + cells("b", 16384, 1)
    (table,) = build_tables(records)
    assert table.cells == {"a": {4096: "100", 16384: "100"}, "b": {4096: "100", 16384: "100 (1 of 3)"}}
    assert table.note.startswith("5 samples per cell (3 at 16k) over depths")


def test_a_ppl_cell_reads_its_length_with_the_settings_of_that_length(tiny_model_dir, tmp_path, novel):
    # Trained to 256: self-extend:auto is the model itself at 200 tokens and groups at 400, so one
    # 400-token run cannot answer the 200 cell (it would group what a 200-token input does not).
    out = tmp_path / "cmp"
    argv = compare_argv(tiny_model_dir, out, novel, tasks="passkey,ppl", methods=["vanilla", "self-extend:auto"])
    assert main(argv) == 0
    found = records(out)
    settings = {(r["task"], r["method"], r["length"]): r["settings"] for r in found}
    for n in (200, 400):
        assert settings["ppl", "self-extend:auto", n] == settings["passkey", "self-extend:auto", n]
    assert settings["ppl", "self-extend:auto", 200] != settings["ppl", "self-extend:auto", 400]
    ppl = {(r["method"], r["length"]): r["perplexity"] for r in found if r["task"] == "ppl"}
    assert ppl["self-extend:auto", 200] == pytest.approx(ppl["vanilla", 200], rel=1e-5)


def test_the_report_opens_with_every_task_at_the_longest_length():
    def cell(task, method, length, score, **extra):
        return {"task": task, "method": method, "settings": method, "length": length, "score": score, **extra}

    records = [
        cell("niah", "a", 4096, 1.0, depth=0.5),
        cell("niah", "a", 8192, 0.0, depth=0.5),
        cell("niah", "b", 4096, 1.0, depth=0.5),  # b never reached 8k
        cell("ruler:vt", "a", 8192, 0.5),
        cell("ruler:cwe", "a", 8192, 1.0),
        cell("ppl", "a", 8192, None, perplexity=12.345, bucket_loss=[2.5], bucket=8192),
    ]
    summary, *rest = build_tables(records)
    assert summary.title == "At 8k: every task"
    assert summary.columns == ["niah", "RULER average", "ppl"]
    assert summary.cells == {"a": {"niah": "0", "RULER average": "75.0", "ppl": "12.35"}}
    assert [t.title for t in rest] == [
        "niah: score (%)",
        "RULER average: score (%)",
        "RULER tasks: score (%)",
        "ppl: perplexity",
    ]
    assert build_tables(records[:3])[0].title == "niah: score (%)"  # one task: its own table says it all


def test_natural_needle_cells_record_the_text_their_haystack_came_from(tiny_model_dir, tmp_path, novel):
    other = tmp_path / "other.txt"
    other.write_text("The lighthouse keeper counted the gulls on the rocks every morning. " * 100)
    out = tmp_path / "cmp"
    argv = compare_argv(tiny_model_dir, out, novel, tasks="niah-natural", methods=["vanilla"], lengths="300")
    assert main([*argv, "--text", str(other)]) == 0
    found = records(out)
    assert [(r["depth"], r["haystack"]) for r in found] == [(0.2, novel.name), (0.8, "other.txt")]
    assert found[0]["variant"] == f"{novel.name},other.txt"
