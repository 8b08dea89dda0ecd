"""The argument parser: every command, every option with its help and its default. Nothing here
imports torch or transformers, so ``longreach --help`` answers at once."""

from __future__ import annotations

import argparse

from longreach import __version__
from longreach.cli.checks import MAX_LENGTH, UsageError
from longreach.eval.task import DEFAULT_DEPTHS
from longreach.models.embedded import DEFAULT_MODEL, EMBEDDED

DEPTHS = ",".join(map(str, DEFAULT_DEPTHS))
METHOD_HELP = (
    "method: NAME, NAME:key=value,... or NAME:auto (settings picked for each length); repeatable, "
    "e.g. --method vanilla --method self-extend:auto (default: vanilla)"
)
TASKS_HELP = (
    "comma-separated tasks: passkey, niah, niah-text (needles in --text), niah-natural (facts told in --text, "
    "several wordings), ruler (all RULER tasks), "
    "ruler:NAME (niah_single_1, niah_single_uuid, niah_multikey, niah_multivalue, niah_multiquery, vt, cwe, fwe), "
    "ppl (perplexity over --text)"
)
TEXT_HELP = (
    "plain-text file, repeatable (read one after another) (default: Alice's Adventures in Wonderland, "
    "public domain, shipped with LongReach: about 39k tokens)"
)
LENGTHS_HELP = f"comma-separated input lengths in tokens, e.g. 4k,8k,16k (at most {MAX_LENGTH // 2**20}M)"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), exit code 2."""

    def error(self, message: str):
        raise UsageError(f"{message} (see: {self.prog} --help)")


class Once(argparse.Action):
    """An option that may be given once: a second value is refused, not silently taken."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not self.default:
            raise argparse.ArgumentError(self, "given twice: one value only")
        setattr(namespace, self.dest, values)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default, except where its help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = "%(default)" in text or "(default:" in text
        if shown or not action.option_strings or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="longreach",
        description="Read past a RoPE model's trained context with training-free methods: evaluate them "
        "(passkey, perplexity, compare), generate with them, serve them through vLLM (serve), and describe a "
        "model (info).",
        epilog="Each command has its own --help. Errors are one line with exit code 2.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"longreach {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    def command(name: str, summary: str, description: str):
        return commands.add_parser(
            name, help=summary, description=f"{summary}.\n\n{description}", formatter_class=HelpFormatter
        )

    def model_options(sub):
        sub.add_argument(
            "--model",
            default=DEFAULT_MODEL,
            help=f"embedded name ({', '.join(EMBEDDED)}), a .gguf file, a model folder or a Hugging Face id (org/name)",
        )
        sub.add_argument(
            "--dtype",
            choices=("float32", "bfloat16", "float16"),
            default=None,
            help="weights' dtype (default: float32 on CPU, bfloat16 on a GPU)",
        )
        sub.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps, ...")

    def evaluation_options(sub, *, out: str, lengths: str):
        sub.add_argument("--method", action="append", metavar="SPEC", help=METHOD_HELP)
        sub.add_argument("--lengths", default=lengths, help=LENGTHS_HELP)
        sub.add_argument(
            "--out", default=out, help="output folder; a rerun into it does only what is missing (resumes)"
        )

    passkey = command(
        "passkey",
        "passkey retrieval, methods x lengths",
        "A 5-digit key hidden at each --depths of filler text, --samples per depth, scored by exact match.\n"
        "Prints accuracy (methods x lengths) and writes into --out: results.jsonl (one line per sample, as\n"
        "compare writes), report.md, passkey.json (the accuracy table) and passkey.png (accuracy by length).\n"
        "The summary covers every result in the folder: run methods one command at a time into one folder.",
    )
    model_options(passkey)
    evaluation_options(passkey, out="results/passkey", lengths="4k,8k,16k")
    passkey.add_argument("--depths", default=DEPTHS, help="needle depths within [0, 1], comma-separated")
    passkey.add_argument("--samples", type=int, default=1, help="samples per length and depth")
    passkey.add_argument("--seed", type=int, default=0, help="seed of the keys: same seed, same prompts")
    passkey.add_argument(
        "--filler", default=None, help="file whose text fills the prompt (default: the classic filler sentences)"
    )
    passkey.set_defaults(run="cmd_passkey")

    perplexity = command(
        "perplexity",
        "perplexity by position on a long text, methods x lengths",
        "Each method reads the text once, with the settings a NAME:auto picks for the longest length; the\n"
        "shorter lengths are its prefixes (by causality, exactly what an input that long scores with\n"
        "those settings). Methods whose attention depends on the input length (dynamic NTK) read each\n"
        "length on its own. (compare's ppl task instead reads each length with the settings picked for\n"
        "that length.) A perplexity at n tokens needs n + 1 tokens of text.\n"
        "Prints perplexity (methods x lengths) and writes into --out: results.jsonl, report.md,\n"
        "perplexity.json and perplexity.png (perplexity by position).",
    )
    model_options(perplexity)
    evaluation_options(perplexity, out="results/perplexity", lengths="4k,8k,16k,32k")
    perplexity.add_argument("--text", action="append", metavar="FILE", help=TEXT_HELP)
    perplexity.set_defaults(run="cmd_perplexity")

    compare = command(
        "compare",
        "methods x tasks x lengths in one run, with a report",
        "Every finished cell is appended to --out/results.jsonl at once; a rerun does only what is missing.\n"
        "Ends with report.md: every task at the longest length, a table per task, heatmaps, RULER average,\n"
        "loss by position and the commands. NAME:auto picks its settings for each length.",
    )
    model_options(compare)
    evaluation_options(compare, out="results/compare", lengths="4k,8k,16k")
    compare.add_argument("--tasks", default="passkey,niah", help=TASKS_HELP)
    compare.add_argument("--depths", default=DEPTHS, help="needle depths of passkey and the niah tasks, within [0, 1]")
    compare.add_argument("--samples", type=int, default=1, help="samples per cell (per depth for needle tasks)")
    compare.add_argument("--seed", type=int, default=0, help="seed of the prompts: same seed, same prompts")
    compare.add_argument(
        "--text",
        action="append",
        metavar="FILE",
        help=TEXT_HELP + "; for niah-text, niah-natural (several: each prompt reads one, in turn) and ppl",
    )
    compare.set_defaults(run="cmd_compare")

    tune = command(
        "tune",
        "measure candidate methods on your model at a target length and recommend one",
        "Candidates (every method's NAME:auto and wider windows, or the --method given) are measured at\n"
        "--target-length on facts told in --text (niah-natural: five wordings at the --depths), a\n"
        "multi-key needle and perplexity over --text, in rounds of successive halving (every candidate's\n"
        "first needle and perplexity, then the better half's next needle, ..., down to two finalists)\n"
        "until --budget runs out. Ranked by the share of needles found; candidates that found as many\n"
        "go in the order listed (the grid starts with the rule's choice; perplexity is shown, not ranked\n"
        "on). Prints the ranking and the recommended spec with its measurements; writes into --out:\n"
        "results.jsonl (a rerun goes on where the last stopped), report.md and tune.json.",
    )
    model_options(tune)
    tune.add_argument("--target-length", required=True, help="the input length to tune for, e.g. 16k")
    tune.add_argument("--budget", default="30m", help="time to spend at most: seconds, or 90s, 30m, 1.5h")
    tune.add_argument("--method", action="append", metavar="SPEC", help="a candidate (repeatable; default: the grid)")
    tune.add_argument(
        "--text", action="append", metavar="FILE", help=TEXT_HELP + "; several: each fact is told in one, in turn"
    )
    tune.add_argument("--depths", default=DEPTHS, help="depths of the facts in the text, within [0, 1]")
    tune.add_argument("--seed", type=int, default=0, help="seed of the prompts: same seed, same prompts")
    tune.add_argument(
        "--out",
        default=None,
        help="output folder; a rerun into it does only what is missing (resumes) "
        "(default: results/tune/MODEL-LENGTH, where --method auto looks)",
    )
    tune.set_defaults(run="cmd_tune")

    report = command(
        "report",
        "rebuild the report of a results folder",
        "Rebuilds report.md and its plots (and passkey.json/png or perplexity.json/png for the folders of\n"
        "those commands) from the folder's results.jsonl alone, and prints its tables.",
    )
    report.add_argument("folder", help="the --out folder of a passkey, perplexity or compare run")
    report.set_defaults(run="cmd_report")

    generate = command(
        "generate",
        "generate from a prompt, streaming tokens",
        "The prompt is read into the cache in chunks (a progress bar when long), then tokens stream to\n"
        "stdout; a last line on stderr gives prefill and decode speeds. Greedy unless --temperature > 0.",
    )
    model_options(generate)
    generate.add_argument(
        "--method", default="vanilla", metavar="SPEC", help="method: NAME, NAME:key=value,... or NAME:auto"
    )
    prompt = generate.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", default=None, metavar="TEXT", help="the prompt itself")
    prompt.add_argument("--prompt-file", default=None, metavar="FILE", help="a file holding the prompt; - reads stdin")
    generate.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most")
    generate.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 decodes greedily")
    generate.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling: keep the smallest set of tokens of this probability"
    )
    generate.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    generate.set_defaults(run="cmd_generate")

    serve = command(
        "serve",
        "serve a model with a method through vLLM's OpenAI-compatible server",
        "Starts vLLM's OpenAI-compatible server (python -m vllm.entrypoints.openai.api_server) with the\n"
        "LongReach plugin on: LONGREACH_METHOD is set to --method, NAME:auto picks settings for\n"
        "--max-model-len, and settings that cannot cover it stop here with the reason. An embedded model or\n"
        "a .gguf file is converted once to safetensors (vLLM loads nothing else) and cached. Needs vLLM in\n"
        "this environment (README, 'Inside vLLM'). Arguments after -- go to vLLM as they are.",
    )
    serve.add_argument("--model", default=DEFAULT_MODEL, help="embedded name, a .gguf file or a model folder")
    serve.add_argument(
        "--method",
        default="vanilla",
        action=Once,
        metavar="SPEC",
        help="method: NAME, NAME:key=value,... or NAME:auto (settings picked for --max-model-len); one per server",
    )
    serve.add_argument("--max-model-len", required=True, help="the longest context (prompt + answer) served, e.g. 16k")
    serve.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="weights' dtype")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("vllm_args", nargs="*", metavar="-- VLLM_ARG", help="more arguments for vLLM's server")
    serve.set_defaults(run="cmd_serve")

    info = command(
        "info",
        "the recommended method for a length, with the model's trained length, RoPE and every method's settings",
        "Loads the model and says what LongReach can do with it: its trained length, RoPE, which methods\n"
        "apply, the recommended one and every method's settings for --target-length.",
    )
    model_options(info)
    info.add_argument(
        "--target-length", default=None, help="suggest settings for this input length, e.g. 32k (default: 4x trained)"
    )
    info.set_defaults(run="cmd_info")
    return parser
