"""The ``longreach`` command line: passkey, perplexity, compare, report, generate, info."""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)
# Piped into a file or a log, result tables get room for long method specs (rich assumes 80 columns).
out = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120)


class UsageError(ValueError):
    """Bad command-line input: reported in one line, exit code 2."""


def _lengths(text: str) -> list[int]:
    from longreach.methods import parse_length

    try:
        return [parse_length(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise UsageError(str(error)) from None


def _depths(text: str) -> list[float]:
    try:
        depths = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"bad depths {text!r}; use fractions such as 0.1,0.5,0.9") from None
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise UsageError(f"bad depths {text!r}; each depth must be within [0, 1]")
    return depths


def _check_specs(specs: list[str]) -> None:
    """Parse specs before the (slow) model load, so a typo fails at once."""
    from longreach.methods import MethodSpecError, parse_method

    for spec in specs:
        try:
            parse_method(spec, target_length=1 << 20, trained_length=1 << 20)
        except MethodSpecError as error:
            raise UsageError(str(error)) from None


def _method(spec: str, target_length: int, trained: int, window: int | None = None):
    from longreach.methods import MethodSpecError, parse_method

    try:
        return parse_method(spec, target_length=target_length, trained_length=trained, sliding_window=window)
    except MethodSpecError as error:
        raise UsageError(str(error)) from None


def _resolve(spec: str, length: int, total: int, trained: int, window: int | None):
    """The method of ``spec`` for inputs of ``length`` tokens that must still cover ``total``
    (the prompt plus the tokens to generate): ``NAME:auto`` picks its settings for the input
    length, and for the total when those would not reach the end of the answer."""
    from longreach.methods import is_auto

    method = _method(spec, length, trained, window)
    limit = method.max_length(trained)
    if limit is not None and limit < total and is_auto(spec):
        method = _method(spec, total, trained, window)
    _check_covers(method, total, trained)
    return method


def _check_covers(method, length: int, trained: int) -> None:
    from longreach.methods import InputTooLongError, check_length

    try:
        check_length(method, length, trained)
    except InputTooLongError as error:
        raise UsageError(str(error)) from None


def _load(name: str, dtype: str | None, device: str | None):
    from transformers.utils import logging as hf_logging

    import longreach

    hf_logging.disable_progress_bar()  # our status line replaces transformers' bars
    try:
        with console.status(f"loading {name}"), _quiet_gguf_conversion():
            return longreach.load_model(name, dtype=dtype, device=device)
    except longreach.ModelNotAvailableError as error:
        raise UsageError(str(error)) from None


@contextmanager
def _quiet_gguf_conversion():
    """transformers' GGUF reader draws its own tqdm bar, which ignores ``disable_progress_bar``
    and garbles the status line; silence it while we load (a no-op if the reader changes)."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf

    bar = getattr(gguf, "tqdm", None)
    if bar is None:
        yield
        return
    gguf.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf.tqdm = bar


def _apply(model, method):
    import longreach

    try:  # vanilla restores the model's own attention: the honest baseline
        return longreach.extend(model, method)
    except ValueError as error:  # settings this model cannot take
        raise UsageError(str(error)) from None


def _counting_progress() -> Progress:
    """A bar with done/total, time elapsed and time left: the long runs say where they are."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def cmd_passkey(args: argparse.Namespace) -> int:
    import longreach
    from longreach.eval.passkey import (
        DEFAULT_DEPTHS,
        FILLER,
        PASSKEY_NEW_TOKENS,
        PROMPT_VERSION,
        accuracy_table,
        read_results,
        run_passkey,
    )
    from longreach.eval.plots import plot_accuracy_by_length
    from longreach.methods import is_auto
    from longreach.models.config import sliding_window, trained_length

    lengths = _lengths(args.lengths)
    depths = _depths(args.depths) if args.depths else list(DEFAULT_DEPTHS)
    specs = args.method or ["vanilla"]
    _check_specs(specs)
    if args.samples < 1:
        raise UsageError(f"--samples must be >= 1, got {args.samples}")
    filler = Path(args.filler).read_text() if args.filler else FILLER
    model, tokenizer = _load(args.model, args.dtype, args.device)
    trained, window = trained_length(model.config), sliding_window(model.config)
    # NAME:auto picks settings per length, as a user would for each input.
    plans = {spec: {n: _resolve(spec, n, n + PASSKEY_NEW_TOKENS, trained, window) for n in lengths} for spec in specs}
    output = Path(args.out)
    output.mkdir(parents=True, exist_ok=True)
    jsonl = output / "passkey.jsonl"
    total = len(specs) * len(lengths) * len(depths) * args.samples
    results = []
    with _counting_progress() as progress:
        task = progress.add_task("passkey", total=total)

        def advance(result, task=task):
            mark = "[green]ok[/]" if result.correct else f"[red]got {result.answer!r}[/]"
            progress.console.print(
                f"  {result.settings} {result.length} tokens, depth {result.depth:.2f}: key {result.key} {mark}"
            )
            progress.advance(task)

        for spec, by_length in plans.items():
            label = spec if is_auto(spec) else by_length[lengths[0]].spec()
            for length, method in by_length.items():
                _apply(model, method)
                progress.update(task, description=f"passkey {method.spec()}")
                results += run_passkey(
                    model,
                    tokenizer,
                    method=label,
                    settings=method.spec(),
                    lengths=[length],
                    depths=depths,
                    samples=args.samples,
                    seed=args.seed,
                    filler=filler,
                    model_name=args.model,
                    out=jsonl,
                    on_result=advance,
                )
        longreach.restore(model)
    # The summary and plot cover every sample of this model and seed in the folder, so methods run
    # one command at a time into one folder end up side by side.
    folder = read_results(jsonl, model=args.model, seed=args.seed) or results
    table = accuracy_table(folder)
    _print_table(
        table,
        sorted({r.length for r in folder}),
        title=f"Passkey retrieval, {args.model} (trained to {trained} tokens)",
    )
    summary = {
        "model": args.model,
        "trained_length": trained,
        "seed": args.seed,
        "prompt_version": PROMPT_VERSION,
        "depths": sorted({r.depth for r in folder}),
        "samples": len({r.sample for r in folder}),
        "accuracy": {
            m: {str(n): {"correct": c, "total": t} for n, (c, t) in cells.items()} for m, cells in table.items()
        },
        "versions": _versions(),
    }
    (output / "passkey.json").write_text(json.dumps(summary, indent=2) + "\n")
    png = plot_accuracy_by_length(
        table, output / "passkey.png", title=f"Passkey retrieval, {args.model}", trained_length=trained
    )
    console.print(f"wrote {jsonl}, {output / 'passkey.json'} and {png}")
    return 0


def _accuracy(cell: tuple[int, int]) -> str:
    correct, total = cell
    return f"{100 * correct / total:.0f}% ({correct}/{total})"


def _print_table(table, columns, *, title: str, show=_accuracy, row_label: str = "method") -> None:
    """Methods x columns (lengths, or a summary's tasks), each cell through ``show``."""
    from longreach.eval.report import column_label

    grid = Table(title=title)
    # A narrow terminal folds the long method specs, never the figures or their headers.
    grid.add_column(row_label, overflow="fold")
    for c in columns:
        grid.add_column(column_label(c), justify="right", no_wrap=True, min_width=len(column_label(c)))
    for method, cells in table.items():
        grid.add_row(method, *(show(cells[c]) if c in cells else "-" for c in columns))
    out.print(grid)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    import longreach

    return {"longreach": longreach.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def cmd_perplexity(args: argparse.Namespace) -> int:
    import longreach
    from longreach.eval.perplexity import perplexity_table, run_perplexity
    from longreach.eval.plots import plot_perplexity_by_position
    from longreach.methods import is_auto
    from longreach.models.config import sliding_window, trained_length

    lengths = _lengths(args.lengths)
    specs = args.method or ["vanilla"]
    _check_specs(specs)
    text = Path(args.text)
    if not text.is_file():
        raise UsageError(f"text file {text} does not exist")
    model, tokenizer = _load(args.model, args.dtype, args.device)
    trained, window = trained_length(model.config), sliding_window(model.config)
    longest = max(lengths)
    output = Path(args.out)
    output.mkdir(parents=True, exist_ok=True)
    jsonl = output / "perplexity.jsonl"
    results = []
    with _counting_progress() as progress:
        for spec in specs:
            method = _method(spec, longest, trained, window)
            _check_covers(method, longest, trained)
            label = spec if is_auto(spec) else method.spec()
            runs = lengths if method.depends_on_length else [longest]
            task = progress.add_task(f"perplexity {method.spec()}", total=sum(runs))
            for length in runs:
                method = _method(spec, length, trained, window)
                _apply(model, method)
                try:
                    found = run_perplexity(
                        model,
                        tokenizer,
                        method=label,
                        settings=method.spec(),
                        text_path=text,
                        lengths=[n for n in lengths if n <= length] if not method.depends_on_length else [length],
                        depends_on_length=method.depends_on_length,
                        model_name=args.model,
                        out=jsonl,
                        on_chunk=lambda n, task=task: progress.advance(task, n),
                    )
                except ValueError as error:
                    raise UsageError(str(error)) from None
                progress.update(task, completed=sum(r for r in runs if r <= length))
                results += found
        longreach.restore(model)
    table = perplexity_table(results)
    _print_table(
        table,
        lengths,
        title=f"Perplexity on {text.name}, {args.model} (trained to {trained} tokens)",
        show=lambda value: f"{value:.2f}",
    )
    curves = {r.method: r.bucket_perplexity for r in results if r.length == longest}
    summary = {
        "model": args.model,
        "trained_length": trained,
        "text": text.name,
        "perplexity": {m: {str(n): v for n, v in cells.items()} for m, cells in table.items()},
        "bucket": results[0].bucket if results else None,
        "bucket_perplexity": curves,
        "versions": _versions(),
    }
    (output / "perplexity.json").write_text(json.dumps(summary, indent=2) + "\n")
    png = plot_perplexity_by_position(
        curves,
        output / "perplexity.png",
        bucket=summary["bucket"] or 1,
        title=f"Perplexity by position, {text.name}",
        trained_length=trained,
    )
    console.print(f"wrote {jsonl}, {output / 'perplexity.json'} and {png}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import shlex

    import longreach
    from longreach.eval.compare import PPL, run_compare
    from longreach.eval.haystack import check_texts
    from longreach.eval.report import RUN, build_tables, write_report
    from longreach.eval.task import build_tasks, known_task_names
    from longreach.models.config import sliding_window, trained_length

    lengths = _lengths(args.lengths)
    specs = args.method or ["vanilla"]
    _check_specs(specs)
    names = [name.strip() for name in args.tasks.split(",") if name.strip()]
    texts = [Path(t) for t in args.text or []]
    depths = _depths(args.depths) if args.depths else None
    if args.samples < 1:
        raise UsageError(f"--samples must be >= 1, got {args.samples}")
    if PPL in names and not texts:
        raise UsageError("the ppl task needs text: pass --text FILE (repeatable), e.g. a public-domain novel")
    if texts:
        try:
            check_texts(texts)
        except ValueError as error:
            raise UsageError(str(error)) from None
    known = [*known_task_names(), PPL]
    unknown = [n for n in names if n not in known and not n.startswith("ruler:")]
    if unknown or not names:
        raise UsageError(f"unknown task {', '.join(map(repr, unknown)) or '(none given)'}; known: {', '.join(known)}")
    generative = [n for n in names if n != PPL]
    try:
        tasks = build_tasks(generative, texts=texts, **({"depths": depths} if depths else {})) if generative else []
    except ValueError as error:
        raise UsageError(str(error)) from None
    model, tokenizer = _load(args.model, args.dtype, args.device)
    trained, window = trained_length(model.config), sliding_window(model.config)
    resolved = {}

    def resolve(spec: str, length: int, total: int) -> str:
        resolved[spec, length] = _resolve(spec, length, total, trained, window)
        return resolved[spec, length].spec()

    def apply(spec: str, length: int) -> str:
        method = resolved[spec, length]
        _apply(model, method)
        return method.spec()

    output = Path(args.out)
    output.mkdir(parents=True, exist_ok=True)
    run_file = output / RUN
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    command = "longreach " + shlex.join(args.argv)
    run.update(
        model=args.model,
        trained_length=trained,
        commands=list(dict.fromkeys([*run.get("commands", []), command])),
        versions=_versions(),
    )
    run_file.write_text(json.dumps(run, indent=2) + "\n")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[cells]} cells"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("compare", total=None, cells=0)

        def start(tokens: int) -> None:
            progress.update(bar, total=max(tokens, 1))

        def finished(record: dict, tokens: int) -> None:
            if record["task"] == PPL:
                mark = f"perplexity {record['perplexity']:.2f}"
            else:
                missed = "" if record["score"] == 1 else f" ({record['answer']!r})"
                mark = f"score {100 * record['score']:.0f}%{missed}"
            where = "" if record.get("depth") is None else f", depth {record['depth']:g}"
            progress.console.print(
                f"  {record['task']} {record['settings']} {record['length']} tokens{where}: {mark}", highlight=False
            )
            cells = progress.tasks[0].fields["cells"] + 1
            progress.update(
                bar, advance=tokens, cells=cells, description=f"{record['method']} {record['task']} {record['length']}"
            )

        try:
            records = run_compare(
                model,
                tokenizer,
                methods=specs,
                tasks=tasks,
                lengths=lengths,
                out=output,
                resolve=resolve,
                apply=apply,
                samples=args.samples,
                seed=args.seed,
                texts=texts,
                ppl=PPL in names,
                depends_on_length=lambda spec: _method(spec, lengths[0], trained).depends_on_length,
                model_name=args.model,
                versions=_versions(),
                on_start=start,
                on_cell=finished,
            )
        except ValueError as error:
            raise UsageError(str(error)) from None
        finally:
            longreach.restore(model)
    for table in build_tables([r for r in records if r["method"] in specs and r["length"] in lengths]):
        _print_table(table.cells, table.columns, title=table.title, show=str, row_label=table.row_label)
    report = write_report(output)
    console.print(f"wrote {output / 'results.jsonl'} and {report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from longreach.eval.records import read_records
    from longreach.eval.report import build_tables, write_report

    folder = Path(args.folder)
    try:
        report = write_report(folder)
    except ValueError as error:
        raise UsageError(str(error)) from None
    for table in build_tables(read_records(folder / "results.jsonl")):
        _print_table(table.cells, table.columns, title=table.title, show=str, row_label=table.row_label)
    console.print(f"wrote {report}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from transformers import TextStreamer

    from longreach.models.config import sliding_window, trained_length

    _check_specs([args.method])
    prompt_path = Path(args.prompt_file)
    if not prompt_path.is_file():
        raise UsageError(f"prompt file {prompt_path} does not exist")
    if args.max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be >= 1")
    model, tokenizer = _load(args.model, args.dtype, args.device)
    text = prompt_path.read_text()
    if args.chat:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
    else:
        ids = tokenizer(text, return_tensors="pt").input_ids
    total = ids.shape[1] + args.max_new_tokens
    trained = trained_length(model.config)
    method = _method(args.method, total, trained, sliding_window(model.config))
    _check_covers(method, total, trained)
    _apply(model, method)
    console.print(f"[dim]{ids.shape[1]} prompt tokens, method {method.spec()}[/]")
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.no_grad():
        model.generate(
            ids.to(model.device),
            attention_mask=torch.ones_like(ids).to(model.device),
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            streamer=streamer,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import longreach

    target = _lengths(args.target_length)[0] if args.target_length else None
    model, _ = _load(args.model, args.dtype, args.device)
    info = longreach.model_info(model, target_length=target)
    grid = Table(title=f"{args.model}", show_header=False)
    grid.add_column("", style="bold")
    grid.add_column("", overflow="fold")  # specs are copied whole
    grid.add_row("model type", info.model_type)
    grid.add_row("trained length", f"{info.trained_length} tokens")
    grid.add_row("supported", "yes" if info.supported else f"no: {info.reason}")
    if info.supported:
        base = f", base {info.rope_base:g}" if info.rope_base is not None else ""
        grid.add_row("RoPE", f"{info.rope_type}{base}")
        grid.add_row("rotary layout", f"{info.rotary_layout}, {info.rotary_dims} of {info.head_dim} head dims")
        if info.sliding_window is not None:
            grid.add_row(
                "sliding window",
                f"{info.sliding_window} tokens: no method reaches further back, InfLLM's local window fits inside it",
            )
    for name, verdict in info.methods.items():
        grid.add_row(f"method {name}", verdict)
    for name, spec in info.suggested.items():
        grid.add_row(f"{name} for {target} tokens", spec)
    out.print(grid)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longreach", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def model_options(sub):
        sub.add_argument("--model", default="smollm2-135m", help="embedded name, .gguf file, folder or HF id")
        sub.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16, float16")
        sub.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, ...")

    passkey = commands.add_parser("passkey", help="passkey retrieval, methods x lengths")
    model_options(passkey)
    passkey.add_argument("--method", action="append", help="NAME[:key=value,...|:auto], repeatable")
    passkey.add_argument("--lengths", default="4k,8k,16k", help="comma-separated, e.g. 4k,8k,16k")
    passkey.add_argument("--depths", default=None, help="needle depths in [0, 1], e.g. 0.1,0.5,0.9")
    passkey.add_argument("--samples", type=int, default=1, help="samples per length and depth")
    passkey.add_argument("--seed", type=int, default=0)
    passkey.add_argument("--filler", default=None, help="file with filler text (default: the classic sentences)")
    passkey.add_argument("--out", default="results/passkey", help="output folder (resumes from its JSON lines)")
    passkey.set_defaults(run=cmd_passkey)

    perplexity = commands.add_parser("perplexity", help="perplexity by position on a long text, methods x lengths")
    model_options(perplexity)
    perplexity.add_argument("--method", action="append", help="NAME[:key=value,...|:auto], repeatable")
    perplexity.add_argument("--text", required=True, help="a long plain-text file (e.g. a public-domain novel)")
    perplexity.add_argument(
        "--lengths",
        default="4k,8k,16k,32k",
        help="comma-separated input lengths; NAME:auto picks its settings for the longest and reads the shorter "
        "as its prefixes (compare's ppl task picks them per length)",
    )
    perplexity.add_argument("--out", default="results/perplexity", help="output folder (resumes from its JSON lines)")
    perplexity.set_defaults(run=cmd_perplexity)

    generate = commands.add_parser("generate", help="generate from a prompt file, streaming tokens")
    model_options(generate)
    generate.add_argument("--method", default="vanilla")
    generate.add_argument("--prompt-file", required=True)
    generate.add_argument("--max-new-tokens", type=int, default=128)
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    generate.set_defaults(run=cmd_generate)

    compare = commands.add_parser("compare", help="methods x tasks x lengths in one run, with a report")
    model_options(compare)
    compare.add_argument("--method", action="append", help="NAME[:key=value,...|:auto], repeatable")
    compare.add_argument(
        "--tasks",
        default="passkey,niah",
        help="comma-separated: passkey, niah, niah-text, ruler (all RULER tasks), ruler:NAME, ppl",
    )
    compare.add_argument("--lengths", default="4k,8k,16k", help="comma-separated, e.g. 4k,8k,16k,32k")
    compare.add_argument("--depths", default=None, help="needle depths of passkey and niah, e.g. 0.1,0.5,0.9")
    compare.add_argument("--samples", type=int, default=1, help="samples per cell (per depth for needle tasks)")
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--text", action="append", help="text file for niah-text haystacks and ppl, repeatable")
    compare.add_argument("--out", default="results/compare", help="output folder (resumes from its JSON lines)")
    compare.set_defaults(run=cmd_compare)

    report = commands.add_parser("report", help="rebuild report.md and its plots from a compare folder")
    report.add_argument("folder", help="the --out folder of a compare run")
    report.set_defaults(run=cmd_report)

    info = commands.add_parser("info", help="trained length, RoPE layout and suggested settings")
    model_options(info)
    info.add_argument("--target-length", default=None, help="e.g. 32k: suggest settings for it")
    info.set_defaults(run=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.run(args)
    except UsageError as error:
        console.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
