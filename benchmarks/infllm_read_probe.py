"""Where do InfLLM's extra blocks help: while the text is read, or when the question is answered?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/infllm_read_probe.py --length 32k --samples 2 \
        --fact 0.1:0 --fact 0.3:1 --fact 0.5:0 $(for f in ../shared/data/texts/*.txt; do echo --text $f; done)

Reading 64 blocks instead of 16 finds more facts told in prose at 32k, mostly facts whose block
the 16-block run retrieves too (docs/results.md, "More blocks"). Each fact (``DEPTH:INDEX`` of the
``niah-natural`` facts at ``--length``, as ``needle_diagnosis.py`` builds them) is read here with
InfLLM (best-key ranking, room for 64 blocks) retrieving a different number of blocks in the two
phases of a prompt: the prefill, where every execution block of the text retrieves its own
blocks and the text's hidden states are built, and the answer (``model.generate``: the last
execution block, which holds the question, and the answer's tokens). Variants ``P/A`` read ``P``
blocks in the prefill and ``A`` at the answer; ``P/A/D`` read ``A`` in the last execution block
and ``D`` in the decoding steps (one query each; the answer's first digit is chosen at the
first or second of them). Each answer's first-digit margin comes from
``needle_diagnosis.diagnose``. Records go to ``--out``/probe.jsonl as they finish (a rerun does
only what is missing); the summary is a table and summary.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from needle_diagnosis import diagnose, ranked_margin, say_answer
from rich.console import Console
from rich.table import Table

import longreach
from longreach.engine.memory import attend as memory_attention
from longreach.eval.natural import NaturalNeedleTask
from longreach.eval.records import append_record, read_records
from longreach.methods import parse_length, parse_method

METHOD = "infllm:block_scoring=best-key,topk=64,max_cached_blocks=64"
VARIANTS = {
    "16/16": (16, 16, 16),
    "64/64": (64, 64, 64),
    "16/64": (16, 64, 64),
    "64/16": (64, 16, 16),
    "16/16/64": (16, 16, 64),
}


class PhaseTopk:
    """Caps the blocks each retrieval reads: ``prefill_topk`` until ``longreach.prefill`` returns,
    ``answer_topk`` after for a block of queries and ``decode_topk`` for one query (the blocks kept
    are the best-ranked, as a smaller ``topk`` would keep)."""

    def __init__(self, prefill_topk: int, answer_topk: int, decode_topk: int):
        self.limits = {"prefill": prefill_topk, "answer": answer_topk, "decode": decode_topk}
        self.phase = "prefill"
        self.select, self.prefill = memory_attention.select_blocks, longreach.prefill

    def __enter__(self) -> PhaseTopk:
        def capped(memory_queries, store, topk, *ranking):
            phase = "decode" if self.phase == "answer" and memory_queries.shape[2] == 1 else self.phase
            return self.select(memory_queries, store, min(topk, self.limits[phase]), *ranking)

        def prefill(*args, **kwargs):
            cache = self.prefill(*args, **kwargs)
            self.phase = "answer"
            return cache

        memory_attention.select_blocks, longreach.prefill = capped, prefill
        return self

    def __exit__(self, *exc) -> None:
        memory_attention.select_blocks, longreach.prefill = self.select, self.prefill


def summarize(records: list[dict], out: Path, console: Console) -> None:
    table = Table(title=f"InfLLM ({METHOD}): blocks read in the prefill / at the answer")
    for column in ("variant", "found", "margin (median)", "margins by fact"):
        table.add_column(column, justify="left" if column == "variant" else "right", overflow="fold")
    rows = []
    for variant in VARIANTS:
        group = sorted((r for r in records if r["variant"] == variant), key=lambda r: (r["depth"], r["index"]))
        if not group:
            continue
        margins = [ranked_margin(r) for r in group]
        rows.append(
            {
                "variant": variant,
                "facts": len(group),
                "found": sum(r["found"] for r in group),
                "margin": statistics.median(margins),
                "margins": margins,
            }
        )
        table.add_row(
            variant,
            f"{rows[-1]['found']:.0f}/{len(group)}",
            f"{rows[-1]['margin']:.2f}",
            " ".join(f"{m:.2f}" for m in margins),
        )
    console.print(table)
    (out / "summary.json").write_text(json.dumps({"method": METHOD, "rows": rows}, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--length", default="32k")
    parser.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9", help="the compare run's depths")
    parser.add_argument("--samples", type=int, default=1, help="per depth, as the compare run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fact", action="append", default=[], help="DEPTH:INDEX of a fact; repeatable")
    parser.add_argument("--variant", action="append", choices=list(VARIANTS), help="default: all")
    parser.add_argument("--text", action="append", default=[], help="a book of the compare run; repeatable")
    parser.add_argument("--out", type=Path, default=Path("results/infllm-read-probe"))
    parser.add_argument("--summary-only", action="store_true", help="the table of what is recorded")
    args = parser.parse_args()
    if not args.summary_only and not (args.fact and args.text):
        parser.error("give --fact DEPTH:INDEX and every --text BOOK of the compare run (or --summary-only)")
    wanted = set()
    for fact in args.fact:
        depth, _, index = fact.partition(":")
        try:
            wanted.add((float(depth), int(index)))
        except ValueError:
            parser.error(f"--fact {fact!r}: give DEPTH:INDEX, e.g. 0.5:0")
    length = parse_length(args.length)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "probe.jsonl"
    records = read_records(path)
    done = {(r["variant"], r["length"], r["depth"], r["index"]) for r in records}
    console = Console(width=160)
    if args.summary_only:
        summarize(records, args.out, console)
        return
    model, tokenizer = longreach.load_model(args.model)
    method = parse_method(METHOD)
    task = NaturalNeedleTask(depths=tuple(float(d) for d in args.depths.split(",")), texts=tuple(args.text))
    facts = [f for f in task.facts(length, args.samples, args.seed) if (f[0], f[1]) in wanted]
    if len(facts) != len(wanted):
        parser.error(f"--fact: {len(wanted) - len(facts)} of them are not among the facts at these depths and samples")
    for variant in args.variant or list(VARIANTS):
        for depth, index, fact in facts:
            if (variant, length, depth, index) in done:
                continue
            ids = task.sample(tokenizer, length, depth, index, fact).prompt_ids
            # generate reads the prompt's rest after prefill's whole chunks: one query there would count as decoding
            if (len(ids) - 1) % method.exec_block == 0:
                parser.error(
                    f"the prompt at depth {depth}, sample {index} leaves generate one token: P/A/D cannot tell"
                )
            with PhaseTopk(*VARIANTS[variant]):
                result = diagnose(model, tokenizer, method, ids, fact, task.max_new_tokens)
            record = {
                "variant": variant,
                "length": length,
                "depth": depth,
                "index": index,
                "text": fact.text.name,
                "value": fact.value,
                **{k: result[k] for k in ("found", "margin", "answer", "distance")},
            }
            append_record(path, record)
            records.append(record)
            say_answer(console, variant, record)
    summarize(records, args.out, console)


if __name__ == "__main__":
    main()
