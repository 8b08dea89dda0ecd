"""The command line: argument errors exit 2 with one line; commands write what they promise."""

import json

import pytest

from longreach.cli import main
from longreach.eval.passkey import PROMPT_VERSION


@pytest.mark.parametrize(
    "argv, message",
    [
        (["passkey", "--method", "bogus"], "unknown method 'bogus'"),
        (["passkey", "--method", "self-extend:group_size=4,window"], "malformed setting"),
        (["passkey", "--method", "self-extend:group_size=0,window=8"], "group_size must be >= 1"),
        (["passkey", "--method", "self-extend:size=4"], "has no setting 'size'"),
        (["passkey", "--lengths", "4k,lots"], "bad length 'lots'"),
        (["passkey", "--depths", "0.5,2"], "within [0, 1]"),
        (["info", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["generate", "--prompt-file", "/no/such/file"], "does not exist"),
    ],
)
def test_bad_arguments_are_one_line_errors_with_exit_code_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") <= 2


def test_passkey_writes_jsonl_summary_and_plot(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "passkey",
        "--model",
        str(tiny_model_dir),
        "--method",
        "vanilla",
        "--method",
        "self-extend:group_size=2,window=64",
        "--lengths",
        "160,300",
        "--depths",
        "0.5",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    lines = (out / "passkey.jsonl").read_text().splitlines()
    assert len(lines) == 4
    summary = json.loads((out / "passkey.json").read_text())
    assert set(summary["accuracy"]) == {"vanilla", "self-extend:group_size=2,window=64"}
    assert summary["prompt_version"] == PROMPT_VERSION  # what the counts were asked with
    assert (out / "passkey.png").read_bytes()[:4] == b"\x89PNG"
    assert "self-extend:group_size=2,window=64" in capsys.readouterr().out
    assert main(argv) == 0  # a rerun resumes: nothing new to write
    assert len((out / "passkey.jsonl").read_text().splitlines()) == 4
    # A method run on its own into the same folder joins the summary and the plot.
    assert main(argv[:3] + ["--method", "rerope:window=64"] + argv[7:]) == 0
    summary = json.loads((out / "passkey.json").read_text())
    assert set(summary["accuracy"]) == {"vanilla", "self-extend:group_size=2,window=64", "rerope:window=64"}


def test_passkey_too_long_for_settings_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    argv = [
        "passkey",
        "--model",
        str(tiny_model_dir),
        "--method",
        "self-extend:group_size=2,window=200",
        "--lengths",
        "400",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 2
    assert "longer than SelfExtend(group_size=2, window=200) covers" in capsys.readouterr().err


def test_settings_that_cover_the_prompt_but_not_the_answer_fail_before_running(tiny_model_dir, tmp_path, capsys):
    # group 2, window 64 covers 448 tokens on this model: a 445-token prompt fits, its 8-token answer does not.
    argv = [
        "passkey",
        "--model",
        str(tiny_model_dir),
        "--method",
        "self-extend:group_size=2,window=64",
        "--lengths",
        "445",
        "--depths",
        "0.5",
        "--out",
        str(tmp_path / "a"),
    ]
    assert main(argv) == 2
    assert "input of 453 tokens is longer than SelfExtend(group_size=2, window=64) covers" in capsys.readouterr().err
    argv = [
        "compare",
        "--model",
        str(tiny_model_dir),
        "--method",
        "self-extend:group_size=2,window=64",
        "--tasks",
        "ruler:niah_single_1",
        "--lengths",
        "440",
        "--out",
        str(tmp_path / "b"),
    ]
    assert main(argv) == 2
    assert "input of 472 tokens is longer than" in capsys.readouterr().err
    assert not (tmp_path / "b" / "results.jsonl").exists()
    argv[4] = "self-extend:auto"  # auto settings reach the end of the answer
    assert main(argv) == 0


def test_info_and_generate(tiny_model_dir, tmp_path, capsys):
    assert main(["info", "--model", str(tiny_model_dir), "--target-length", "1k"]) == 0
    shown = capsys.readouterr().out
    assert "half-split" in shown and "self-extend:group_size=" in shown
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Once upon a time " * 20)
    argv = [
        "generate",
        "--model",
        str(tiny_model_dir),
        "--method",
        "self-extend:auto",
        "--prompt-file",
        str(prompt),
        "--max-new-tokens",
        "5",
    ]
    assert main(argv) == 0
    argv[-1] = "1000"
    argv[4] = "self-extend:group_size=2,window=64"
    assert main(argv) == 2
    assert "input of 1" in capsys.readouterr().err


def test_auto_settings_are_picked_per_length_and_every_method_runs(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "auto"
    methods = [
        "self-extend:auto",
        "dual-chunk:auto",
        "lm-infinite:local_window=64,n_global=4,distance_limit=128",
        "rerope:window=64",
        "leaky-rerope:auto",
        "streaming-llm:auto",
        "linear:auto",
        "dynamic-ntk:auto",
        "yarn:auto",
    ]
    argv = ["passkey", "--model", str(tiny_model_dir), "--lengths", "160,600", "--depths", "0.5", "--out", str(out)]
    for spec in methods:
        argv += ["--method", spec]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "passkey.jsonl").read_text().splitlines()]
    assert len(records) == 2 * len(methods)
    self_extend = {r["length"]: r["settings"] for r in records if r["method"] == "self-extend:auto"}
    assert self_extend == {160: "self-extend:group_size=1,window=64", 600: "self-extend:group_size=3,window=64"}
    summary = json.loads((out / "passkey.json").read_text())
    assert set(summary["accuracy"]) == set(methods)


def test_settings_the_model_cannot_take_are_usage_errors(tiny_model_dir, tmp_path, capsys):
    argv = [
        "passkey",
        "--model",
        str(tiny_model_dir),
        "--method",
        "dual-chunk:chunk_size=300,local_window=8",
        "--lengths",
        "160",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 2
    assert "chunk_size=300 reaches rotary distance 300" in capsys.readouterr().err


def test_perplexity_writes_table_json_and_plot(tiny_model_dir, tmp_path, capsys):
    text = tmp_path / "novel.txt"
    text.write_text("It was a dark and stormy night; the rain fell in torrents. " * 60)
    out = tmp_path / "ppl"
    argv = [
        "perplexity",
        "--model",
        str(tiny_model_dir),
        "--method",
        "vanilla",
        "--method",
        "dual-chunk:auto",
        "--method",
        "dynamic-ntk:factor=2",
        "--text",
        str(text),
        "--lengths",
        "128,400",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    summary = json.loads((out / "perplexity.json").read_text())
    assert set(summary["perplexity"]) == {"vanilla", "dual-chunk:auto", "dynamic-ntk:factor=2"}
    assert set(summary["perplexity"]["vanilla"]) == {"128", "400"}
    runs = [json.loads(line) for line in (out / "perplexity.jsonl").read_text().splitlines()]
    assert [r["length"] for r in runs if r["method"].startswith("dynamic")] == [128, 400]  # one run per length
    assert [r["length"] for r in runs if r["method"] == "vanilla"] == [400]  # shorter lengths from one run
    assert (out / "perplexity.png").read_bytes()[:4] == b"\x89PNG"
    assert "Perplexity on novel.txt" in capsys.readouterr().out
    argv[-3] = "100000"
    argv[-5] = str(text)
    assert main(argv) == 2
    assert "fewer than the 100001 needed" in capsys.readouterr().err


def test_loading_silences_the_gguf_readers_own_bar_and_restores_it(capsys):
    from transformers import modeling_gguf_pytorch_utils as gguf

    from longreach.cli import _quiet_gguf_conversion

    bar = gguf.tqdm
    with _quiet_gguf_conversion():
        list(gguf.tqdm(range(3), desc="Converting"))
    assert "Converting" not in capsys.readouterr().err
    assert gguf.tqdm is bar
    list(gguf.tqdm(range(3), desc="Converting"))
    assert "Converting" in capsys.readouterr().err
