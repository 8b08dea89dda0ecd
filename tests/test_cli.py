"""The command line: every misuse is one line with exit code 2, caught before the model loads;
--help answers without torch; the commands write what they promise."""

import importlib.util
import io
import json
import subprocess
import sys

import pytest
import torch

from longreach.cli import build_parser, main
from longreach.cli.parser import HelpFormatter
from longreach.data import DEFAULT_TEXT
from longreach.eval.passkey import PROMPT_VERSION

CUDA = "CUDA is not available" if not torch.cuda.is_available() else None

# (argv, message): {model} is a tiny model folder, {tmp} an empty folder, {file} a text file,
# {empty} an empty file. None of these loads a model.
BAD = [
    ([], "the following arguments are required: COMMAND"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["passkey", "--bogus"], "unrecognized arguments: --bogus"),
    (["passkey", "--lengths", ","], "--lengths ',' names no length"),
    (["passkey", "--lengths", "4k,lots"], "bad length 'lots'"),
    (["passkey", "--lengths", "99999999k"], "length 102399998976 is beyond the 16M tokens LongReach evaluates"),
    (["passkey", "--lengths", "0"], "whole positive token count"),
    (["passkey", "--depths", "0.5,2"], "within [0, 1]"),
    (["passkey", "--depths", "half"], "bad --depths 'half'"),
    (["passkey", "--depths", ","], "each depth must be within [0, 1]"),
    (["passkey", "--samples", "0"], "--samples must be >= 1, got 0"),
    (["passkey", "--samples", "two"], "argument --samples: invalid int value: 'two'"),
    (["passkey", "--method", "bogus"], "unknown method 'bogus'"),
    (["passkey", "--method", "self-extend:group_size=4,window"], "malformed setting"),
    (["passkey", "--method", "self-extend:group_size=0,window=8"], "group_size must be >= 1"),
    (["passkey", "--method", "self-extend:size=4"], "has no setting 'size'"),
    (["passkey", "--filler", "{tmp}/missing.txt"], "filler file {tmp}/missing.txt does not exist"),
    (["passkey", "--filler", "{empty}"], "filler file {empty} is empty"),
    (["passkey", "--out", "{file}"], "--out {file} is a file, not a folder"),
    (["passkey", "--out", "{file}/results"], "is a file, so the folder cannot be made"),
    (["passkey", "--dtype", "float33"], "argument --dtype: invalid choice: 'float33'"),
    (["passkey", "--device", "gpu"], "unknown device 'gpu'"),
    (["passkey", "--model", "{tmp}/no/such/model"], "model folder {tmp}/no/such/model does not exist"),
    (["passkey", "--model", "./no-such-folder"], "model folder ./no-such-folder does not exist"),
    (["passkey", "--model", "{tmp}"], "{tmp} holds no model: a model folder has a config.json"),
    (["passkey", "--model", "{file}"], "is a file, not a model"),
    (["passkey", "--model", "{tmp}/missing.gguf"], "GGUF file {tmp}/missing.gguf does not exist"),
    (["info", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["info", "--target-length", "lots"], "--target-length: bad length 'lots'"),
    (["perplexity", "--text", "{tmp}/missing.txt"], "text file {tmp}/missing.txt does not exist"),
    (["perplexity", "--text", "{empty}"], "text file {empty} is empty"),
    (["perplexity", "--lengths", "4k,,"], None),  # a trailing comma is fine: checked up to the model
    (["compare", "--tasks", "passkey,bogus"], "unknown task 'bogus'"),
    (["compare", "--tasks", ","], "unknown task (none given)"),
    (["compare", "--tasks", "ruler:qa"], "unknown RULER task 'ruler:qa'"),
    (["compare", "--tasks", "niah-text", "--text", "{empty}"], "text file {empty} is empty"),
    (["compare", "--samples", "-1"], "--samples must be >= 1"),
    (["serve"], "the following arguments are required: --max-model-len"),
    (["serve", "--max-model-len", "lots"], "--max-model-len: bad length 'lots'"),
    (["serve", "--max-model-len", "16k", "--method", "bogus"], "unknown method 'bogus'"),
    (["serve", "--max-model-len", "16k", "--port", "0"], "--port must be >= 1"),
    (["serve", "--max-model-len", "16k", "--method", "rerope:auto", "--method", "vanilla"], "--method: given twice"),
    (["report", "{tmp}/none"], "{tmp}/none does not exist; give the --out folder"),
    (["report", "{tmp}"], "holds no results"),
    (["report", "{file}"], "is a file, not a folder"),
    (["generate"], "one of the arguments --prompt --prompt-file is required"),
    (["generate", "--prompt", "hi", "--prompt-file", "{file}"], "not allowed with argument"),
    (["generate", "--prompt-file", "/no/such/file"], "prompt file /no/such/file does not exist"),
    (["generate", "--prompt-file", "{empty}"], "prompt file {empty} is empty"),
    (["generate", "--prompt-file", "{tmp}"], "is a folder"),
    (["generate", "--prompt", "  "], "--prompt is empty"),
    (["generate", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    (["generate", "--prompt", "hi", "--temperature", "-1"], "--temperature must be >= 0"),
    (["generate", "--prompt", "hi", "--top-p", "0"], "--top-p must be within (0, 1], got 0.0"),
    (["generate", "--prompt", "hi", "--method", "nope"], "unknown method 'nope'"),
]
if CUDA:
    BAD.append((["passkey", "--device", "cuda"], "device 'cuda' asked for, but CUDA is not available here"))


@pytest.mark.parametrize("argv, message", [case for case in BAD if case[1]], ids=lambda v: " ".join(v)[:60])
def test_every_misuse_is_one_line_with_exit_code_2(argv, message, tmp_path, capsys, monkeypatch):
    import longreach.cli.commands as commands

    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "file.txt").write_text("Some text.")
    (tmp_path / "empty.txt").write_text(" \n")
    names = {"tmp": str(folder), "file": str(tmp_path / "file.txt"), "empty": str(tmp_path / "empty.txt")}
    monkeypatch.setattr(commands, "load", lambda args: pytest.fail("a misuse must be caught before the model loads"))
    monkeypatch.chdir(tmp_path)
    assert main([arg.format(**names) for arg in argv]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err and captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert message.format(**names) in captured.err


def test_a_hub_id_that_is_not_cached_fails_fast_with_what_to_do(monkeypatch, capsys):
    from huggingface_hub import constants

    import longreach.models.loading as loading

    monkeypatch.setattr(loading, "_hub_reachable", lambda endpoint: False)
    assert main(["info", "--model", "nobody/no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "nobody/no-such-model is not in the local Hugging Face cache and the hub cannot be reached" in err
    assert "download it first" in err and "give a local folder" in err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["info", "--model", "nobody/no-such-model"]) == 2
    assert "and HF_HUB_OFFLINE is set" in capsys.readouterr().err


def test_help_imports_neither_torch_nor_transformers():
    code = (
        "import sys, contextlib, io\n"
        "from longreach.cli import build_parser, main\n"
        "parser = build_parser()\n"
        "commands = next(a for a in parser._actions if a.dest == 'command').choices\n"
        "for argv in [['--help'], ['--version'], *([name, '--help'] for name in commands)]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "heavy = [m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_every_option_has_help_and_shows_its_default():
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subcommands.items():
        required_groups = {id(a) for g in sub._mutually_exclusive_groups if g.required for a in g._group_actions}
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            shown = HelpFormatter("longreach")._get_help_string(action)
            assert action.help, f"{name} {action.option_strings[0]} has no help"
            if action.nargs != 0 and not action.required and id(action) not in required_groups:
                assert "default" in shown, f"{name} {action.option_strings[0]} does not show its default"
    assert "0.1,0.3,0.5,0.7,0.9" in subcommands["passkey"].format_help()  # the one default depth grid


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["--version"])
    assert exit_code.value.code == 0 and capsys.readouterr().out.startswith("longreach ")


def passkey_argv(model_dir, out, *methods, lengths="160,300", depths="0.5"):
    argv = ["passkey", "--model", str(model_dir), "--lengths", lengths, "--depths", depths, "--out", str(out)]
    for spec in methods:
        argv += ["--method", spec]
    return argv


def records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_passkey_writes_records_report_summary_and_plot(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = passkey_argv(tiny_model_dir, out, "vanilla", "self-extend:group_size=2,window=64")
    assert main(argv) == 0
    assert len(records(out)) == 4 and {r["task"] for r in records(out)} == {"passkey"}
    summary = json.loads((out / "passkey.json").read_text())
    assert set(summary["accuracy"]) == {"vanilla", "self-extend:group_size=2,window=64"}
    assert summary["prompt_version"] == PROMPT_VERSION  # what the counts were asked with
    assert summary["depths"] == [0.5] and summary["accuracy"]["vanilla"]["160"]["total"] == 1
    assert (out / "passkey.png").read_bytes()[:4] == b"\x89PNG"
    assert "## passkey: score" in (out / "report.md").read_text()
    shown = capsys.readouterr()
    assert "Passkey retrieval" in shown.out and "self-extend:group_size=2,window=64" in shown.out
    assert "passkey.json" in shown.err and "passkey.png" in shown.err
    assert main(argv) == 0  # a rerun resumes: nothing new to write
    assert len(records(out)) == 4
    # A method run on its own into the same folder joins the summary and the plot.
    assert main(passkey_argv(tiny_model_dir, out, "rerope:window=64")) == 0
    summary = json.loads((out / "passkey.json").read_text())
    assert set(summary["accuracy"]) == {"vanilla", "self-extend:group_size=2,window=64", "rerope:window=64"}
    # The report command rebuilds the summary from the records alone.
    (out / "passkey.json").unlink()
    (out / "passkey.png").unlink()
    assert main(["report", str(out)]) == 0
    assert json.loads((out / "passkey.json").read_text()) == summary and (out / "passkey.png").is_file()


def test_passkey_with_a_filler_of_ones_own_asks_again(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    filler = tmp_path / "filler.txt"
    filler.write_text("It was a dark and stormy night; the rain fell in torrents.")
    assert main(passkey_argv(tiny_model_dir, out, lengths="160")) == 0
    assert main([*passkey_argv(tiny_model_dir, out, lengths="160"), "--filler", str(filler)]) == 0
    found = records(out)
    assert len(found) == 2 and "variant" not in found[0] and found[1]["variant"].startswith("filler:")


def test_passkey_too_long_for_settings_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    argv = passkey_argv(tiny_model_dir, tmp_path / "out", "self-extend:group_size=2,window=200", lengths="400")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "longer than SelfExtend(group_size=2, window=200) covers" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_settings_that_cover_the_prompt_but_not_the_answer_fail_before_running(tiny_model_dir, tmp_path, capsys):
    # group 2, window 64 covers 448 tokens on this model: a 445-token prompt fits, its 8-token answer does not.
    argv = passkey_argv(tiny_model_dir, tmp_path / "a", "self-extend:group_size=2,window=64", lengths="445")
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


def test_info_and_generate(tiny_model_dir, tmp_path, capsys, monkeypatch):
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
    err = capsys.readouterr().err
    assert "81 prompt tokens" in err and "prefill: 81 tokens in" in err and "decode: 5 tokens" in err
    assert "tokens/s" in err
    monkeypatch.setattr(sys, "stdin", io.StringIO("Once upon a time " * 20))
    argv[6] = "-"  # the prompt from standard input, sampled
    assert main([*argv, "--temperature", "0.8", "--top-p", "0.9", "--seed", "3"]) == 0
    assert "81 prompt tokens" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_model_dir), "--prompt", "Once upon", "--max-new-tokens", "2"]) == 0
    argv[6] = str(prompt)
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
    assert main(passkey_argv(tiny_model_dir, out, *methods, lengths="160,600")) == 0
    found = records(out)
    assert len(found) == 2 * len(methods)
    self_extend = {r["length"]: r["settings"] for r in found if r["method"] == "self-extend:auto"}
    assert self_extend == {160: "self-extend:group_size=1,window=64", 600: "self-extend:group_size=3,window=64"}
    summary = json.loads((out / "passkey.json").read_text())
    assert set(summary["accuracy"]) == set(methods)
    assert summary["settings"]["self-extend:auto"] == {"160": self_extend[160], "600": self_extend[600]}


def test_settings_the_model_cannot_take_are_usage_errors(tiny_model_dir, tmp_path, capsys):
    argv = passkey_argv(tiny_model_dir, tmp_path, "dual-chunk:chunk_size=300,local_window=8", lengths="160")
    assert main(argv) == 2
    assert "chunk_size=300 reaches rotary distance 300" in capsys.readouterr().err


def test_perplexity_reads_the_longest_and_writes_table_json_and_plot(tiny_model_dir, tmp_path, capsys):
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
    assert set(summary["perplexity"]["vanilla"]) == {"128", "400"} and summary["text"] == "novel.txt"
    found = records(out)
    assert {(r["method"], r["length"]) for r in found} == {(m, n) for m in summary["perplexity"] for n in (128, 400)}
    # dual-chunk:auto reads 128 tokens with the settings it picks for 400: one run answers both.
    settings = {(r["method"], r["length"]): r["settings"] for r in found}
    assert settings["dual-chunk:auto", 128] == settings["dual-chunk:auto", 400]
    assert (out / "perplexity.png").read_bytes()[:4] == b"\x89PNG"
    assert "Perplexity on novel.txt" in capsys.readouterr().out
    argv[-3] = "100000"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "the text (novel.txt) holds" in err and "not 100000" in err and "--text FILE" in err


def test_perplexity_reads_the_shipped_novel_by_default(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ppl"
    assert main(["perplexity", "--model", str(tiny_model_dir), "--lengths", "256", "--out", str(out)]) == 0
    assert f"Perplexity on {DEFAULT_TEXT.name}" in capsys.readouterr().out
    assert main(["perplexity", "--model", str(tiny_model_dir), "--lengths", "48k", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"the text ({DEFAULT_TEXT.name}) holds" in err and "not 48k" in err and "--text FILE" in err


def test_serve_without_vllm_says_where_to_get_it(capsys):
    found = importlib.util.find_spec("vllm")
    if found is not None and found.origin is not None:
        pytest.skip("vLLM is installed here; tests/vllm_plugin covers serve")
    assert main(["serve", "--max-model-len", "16k", "--method", "rerope:auto"]) == 2
    captured = capsys.readouterr()
    assert "runs vLLM, which is not installed in this environment" in captured.err + captured.out
