"""Why a needle told in natural text is lost: what the answer sees of it, per method.

    .venv/bin/python benchmarks/needle_diagnosis.py --length 16k --method rerope:auto \
        --method self-extend:auto --method infllm:auto $(for f in ../shared/data/texts/*.txt; do echo --text $f; done)

Builds the prompts of ``longreach compare --tasks niah-natural`` (same texts, depths, seed and
samples: the same facts at the same places) and, for each method, reads each prompt and answers
it greedily, recording at the step that chooses the answer's first digit (the answer " 746011"
is a lone space, then digits: the step after the prompt's last token, when the space came first):

- the attention mass every head of every layer puts on the needle's tokens (the fact's sentence),
  taken from the model's own attention call with values that mark the needle (1 on its tokens,
  0 elsewhere), so the mass is exactly what that method's attention gives it;
- the logit margin of that digit (its logit minus the best other token's);
- for InfLLM, the rank of the needle's block among all stored blocks in each layer's retrieval
  (0 = best; the top ``topk`` are read), watching ``select_blocks`` without changing it.

Each fact is also asked at ``--control-length`` (inside the trained length, same depth) with the
model's own attention: the heads that read the needle there are the ones to watch beyond it.
Every answer is also a cell of ``longreach compare`` (the same prompt, read greedily): with
``--compare-out DIR`` it is appended to DIR/results.jsonl as compare writes it, so that a compare
run into DIR does not ask it again. Records go to ``--out``/diagnosis.jsonl as they finish (a
rerun does only what is missing); the summary is a table, summary.json, and needle-mass.png /
infllm-rank.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

import longreach  # noqa: E402
from longreach.engine.eviction import evicts  # noqa: E402
from longreach.engine.memory import attend as memory_attention  # noqa: E402
from longreach.eval.compare import sample_record  # noqa: E402
from longreach.eval.evaluate import versions  # noqa: E402
from longreach.eval.natural import NaturalNeedleTask  # noqa: E402
from longreach.eval.records import append_record, read_records  # noqa: E402
from longreach.eval.task import string_match_all  # noqa: E402
from longreach.integrations.transformers.forward_args import cache_kwargs  # noqa: E402
from longreach.methods import parse_length, parse_method  # noqa: E402
from longreach.models.config import trained_length  # noqa: E402

CONTROL = "vanilla"


#: Answer steps watched: the answer's first digit comes at step 0 or 1 (after a lone space).
STEPS = 3


class NeedleProbe:
    """Wraps the model's attention function while the answer is generated: at the calls of the
    first :data:`STEPS` steps (step 0 reads the rest of the prompt, the prefill having read whole
    chunks, and predicts from its last row), attends once more with values marking ``span`` and
    keeps the last query row's result, the mass each query head puts on those keys:
    ``steps[step][layer]``."""

    def __init__(self, model, span: tuple[int, int]):
        self.implementation = model.config._attn_implementation
        self.original = ALL_ATTENTION_FUNCTIONS[self.implementation]
        self.span = span
        self.steps: list[dict[int, list[float]]] = []

    def __enter__(self) -> NeedleProbe:
        ALL_ATTENTION_FUNCTIONS[self.implementation] = self
        return self

    def __exit__(self, *exc) -> None:
        del ALL_ATTENTION_FUNCTIONS[self.implementation]

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        output = self.original(module, query, key, value, attention_mask, **kwargs)
        if not self.steps or module.layer_idx in self.steps[-1]:
            self.steps.append({})
        if len(self.steps) <= STEPS:
            # Non-evicting caches hold every token at its index: key j is the token at position j.
            marks = torch.zeros_like(value)
            marks[:, :, self.span[0] : self.span[1], 0] = 1
            mass = self.original(module, query, key, marks, attention_mask, **kwargs)[0]  # (B, Nq, Hq, D)
            self.steps[-1][module.layer_idx] = mass[0, -1, :, 0].float().tolist()
        return output


class RetrievalWatch:
    """Records InfLLM's relevance of every stored block at each layer's retrieval in the first
    :data:`STEPS` answer steps (step 0: the execution block that holds the prompt's end, ranked
    by its mean query, as InfLLM does), and what other rankings would give there
    (:func:`alternative_rankings`): ``steps[step][layer]`` = (relevance, alternatives)."""

    def __init__(self, layers: int, scale: float):
        self.layers, self.scale = layers, scale
        self.steps: list[list[tuple[torch.Tensor, dict[str, torch.Tensor]]]] = []
        self.select = memory_attention.select_blocks

    def __enter__(self) -> RetrievalWatch:
        def watched(memory_queries, store, topk, *ranking):
            if not self.steps or len(self.steps[-1]) == self.layers:
                self.steps.append([])
            if len(self.steps) <= STEPS:
                relevance = memory_attention.block_relevance(memory_queries, store, *ranking)[0].cpu()
                self.steps[-1].append((relevance, alternative_rankings(memory_queries, store, self.scale)))
            return self.select(memory_queries, store, topk, *ranking)

        memory_attention.select_blocks = watched
        return self

    def __exit__(self, *exc) -> None:
        memory_attention.select_blocks = self.select


def alternative_rankings(memory_queries, store, scale: float) -> dict[str, torch.Tensor]:
    """Block relevance (blocks,) of row 0 under other rankings, for the same queries: the
    representative's match summed or as a softmax per head, and the best match of any key of the
    block (what exact attention would find) and Quest's upper bound of it from the block's
    per-channel key minimum and maximum, each summed or as a softmax per head."""
    batch, q_heads, _, head_dim = memory_queries.shape
    kv_heads, count, size = store.kv_heads, store.count, store.block_size
    keys, _ = store.gather(torch.arange(count)[None, None].expand(batch, kv_heads, count))
    query = memory_queries.float().mean(dim=2).reshape(batch, kv_heads, q_heads // kv_heads, head_dim)
    keys = keys.float()
    best = store.best_key_scores(query)  # (B, Hkv, G, N): what block_scoring="best-key" ranks by
    # Quest's bound on the best match from each block's per-channel key minimum and maximum.
    blocks = keys.reshape(batch, kv_heads, count, size, head_dim)
    low, high = blocks.amin(dim=3), blocks.amax(dim=3)  # (B, Hkv, N, D)
    q = query[:, :, :, None, :]  # (B, Hkv, G, 1, D)
    bound = torch.maximum(q * low[:, :, None], q * high[:, :, None]).sum(-1)  # (B, Hkv, G, N)
    representative = torch.einsum("bhgd,bhnd->bhgn", query, store.representatives)
    return {
        "representative-sum": representative.sum(dim=(1, 2))[0].cpu(),
        "representative-softmax": (representative * scale).softmax(dim=-1).sum(dim=(1, 2))[0].cpu(),
        "best-key-sum": best.sum(dim=(1, 2))[0].cpu(),
        "best-key-softmax": (best * scale).softmax(dim=-1).sum(dim=(1, 2))[0].cpu(),
        "key-bound-sum": bound.sum(dim=(1, 2))[0].cpu(),
        "key-bound-softmax": (bound * scale).softmax(dim=-1).sum(dim=(1, 2))[0].cpu(),
    }


def find(ids: list[int], piece: list[int]) -> int:
    for start in range(len(ids) - len(piece), -1, -1):
        if ids[start : start + len(piece)] == piece:
            return start
    raise ValueError("the needle's tokens are not in the prompt")


def diagnose(model, tokenizer, method, ids: list[int], fact, new_tokens: int) -> dict:
    """One prompt read with ``method`` (a Method, or None for the model's own attention)."""
    longreach.extend(model, method if method is not None else "vanilla")
    needle = tokenizer(" " + fact.needle, add_special_tokens=False).input_ids
    start = find(ids, needle)
    tensor = torch.tensor([ids])
    memory = method is not None and method.attention == "memory"
    expected = tokenizer(" " + fact.value, add_special_tokens=False).input_ids
    config = model.config
    scale = (getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads) ** -0.5
    watch = (
        RetrievalWatch(config.num_hidden_layers, scale) if memory else NeedleProbe(model, (start, start + len(needle)))
    )
    with torch.no_grad():
        cache = longreach.prefill(model, tensor)
        with watch:
            out = model.generate(
                tensor,
                attention_mask=torch.ones_like(tensor),
                do_sample=False,
                max_new_tokens=new_tokens,
                pad_token_id=tokenizer.eos_token_id,
                **cache_kwargs(model, cache),
                output_scores=True,
                return_dict_in_generate=True,
            )
    # The margin of the first token that carries a digit (the tokenizer may give the space alone),
    # read where the greedy answer so far is the expected one.
    step = next(i for i, t in enumerate(expected) if any(c.isdigit() for c in tokenizer.decode([t])))
    generated = out.sequences[0, len(ids) :].tolist()
    logits = out.scores[step][0].float() if generated[:step] == expected[:step] else None
    margin = None
    if logits is not None:
        others = logits.clone()
        others[expected[step]] = float("-inf")
        margin = float(logits[expected[step]] - others.max())
    answer = tokenizer.decode(out.sequences[0, len(ids) :], skip_special_tokens=True)
    record = {
        "needle_start": start,
        "needle_tokens": len(needle),
        "distance": len(ids) - start,
        "answer": answer,
        "found": string_match_all(answer, (fact.value,)),
        "margin": margin,  # None: the answer went astray before its first digit
        "first_tokens": tokenizer.decode(generated[: step + 1]),
    }
    if memory:
        blocks = sorted({(p - method.n_init) // method.block_size for p in range(start, start + len(needle))})

        def rank(relevance):
            order = relevance.argsort(descending=True)
            stored = [b for b in blocks if b < relevance.numel()]
            return min(int((order == b).nonzero()) for b in stored) if stored else None

        def ranks_at(step):
            layers = watch.steps[step] if step < len(watch.steps) else []
            names = layers[0][1].keys() if layers else ()
            return [rank(relevance) for relevance, _ in layers], {
                name: [rank(alternatives[name]) for _, alternatives in layers] for name in names
            }

        # Where the answer's first digit is chosen.
        record["ranks"], record["ranks_by"] = ranks_at(step)
        record.update(
            needle_blocks=blocks,
            blocks=int(watch.steps[step][0][0].numel()) if step < len(watch.steps) and watch.steps[step] else 0,
            topk=method.topk,
        )
    else:
        digit = watch.steps[step]  # where the answer's first digit is chosen
        record["mass"] = [digit[layer] for layer in sorted(digit)]
    return record


def summarize(records: list[dict], out: Path, console: Console) -> None:
    control = [r for r in records if r["method"] == CONTROL and "mass" in r]
    if control:  # the heads that read the needle inside the trained length
        layers, heads = len(control[0]["mass"]), len(control[0]["mass"][0])
        mean = torch.tensor([r["mass"] for r in control]).mean(dim=0)
        watched = mean.flatten().topk(min(10, layers * heads)).indices.tolist()
        reading_layers = sorted({index // heads for index in watched})
    else:
        watched, reading_layers = [], []
    rows = runs(records)
    table = Table(title="What the answer's first digit sees of the needle (niah-natural)")
    table.add_column("method", overflow="fold")
    for column in (
        "length",
        "found",
        "margin (median)",
        "mass on needle, 10 reading heads",
        "max head mass (median)",
        "InfLLM: needle's block read, share of reading layers",
    ):
        # Specs are copied whole into commands: a long one folds instead of losing its end.
        table.add_column(column, justify="right", overflow="fold")
    summary = []
    for (method, length), group in rows:
        entry = {
            "method": method,
            "length": length,
            "samples": len(group),
            "found": sum(r["found"] for r in group),
            "margin": statistics.median(ranked_margin(r) for r in group),
        }
        if "mass" in group[0]:
            masses = torch.tensor([r["mass"] for r in group])  # (samples, layers, heads)
            flat = masses.flatten(1)
            entry["reading_heads_mass"] = float(flat[:, watched].mean()) if watched else None
            entry["max_head_mass"] = statistics.median(flat.max(dim=1).values.tolist())
        if "ranks" in group[0] and reading_layers:
            entry["block_read"] = share_read([r["ranks"] for r in group], group[0]["topk"], reading_layers)
        summary.append(entry)
        table.add_row(
            method,
            str(length),
            f"{entry['found']:.0f}/{len(group)}",
            f"{entry['margin']:.2f}",
            show(entry, "reading_heads_mass", "{:.4f}"),
            show(entry, "max_head_mass", "{:.4f}"),
            show(entry, "block_read", "{:.0%}"),
        )
    console.print(table)
    alternatives = Table(title="InfLLM: share of reading layers whose top-k would hold the needle's block, by ranking")
    alternatives.add_column("method", overflow="fold")
    alternatives.add_column("length", justify="right")
    names = sorted({name for r in records for name in r.get("ranks_by", {})})
    for name in names:
        alternatives.add_column(name, justify="right")
    for (method, length), group in rows:
        group = [r for r in group if "ranks_by" in r]
        if not group or not reading_layers:
            continue
        shares = [share_read([r["ranks_by"][name] for r in group], group[0]["topk"], reading_layers) for name in names]
        alternatives.add_row(method, str(length), *(f"{share:.0%} ({len(group)})" for share in shares))
    if names:
        console.print(alternatives)
    summary_json = {"reading_heads": watched, "reading_layers": reading_layers, "rows": summary}
    (out / "summary.json").write_text(json.dumps(summary_json, indent=1) + "\n")
    plot(rows, out)


def ranked_margin(record: dict) -> float:
    """The first digit's margin, an answer astray before its first digit counting as the lowest."""
    return record["margin"] if record["margin"] is not None else float("-inf")


def say_answer(console: Console, label: str, record: dict) -> None:
    """One line per answer as it is recorded: the fact, whether it was found, the margin."""
    console.print(
        f"{label} depth {record['depth']} {record['text']}: found {record['found']:.0f}, "
        f"margin {record['margin']}, answer {record['answer'][:40]!r}"
    )


def runs(records: list[dict]) -> list[tuple[tuple[str, int], list[dict]]]:
    """The records grouped by (method, length), shortest length first."""
    rows: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        rows.setdefault((r["method"], r["length"]), []).append(r)
    return sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0]))


def share_read(ranks: list[list[int | None]], topk: int, layers: list[int]) -> float:
    """The share of (sample, layer) retrievals whose top ``topk`` hold the needle's block; a needle
    still held in the cache (rank None: not in a block) is always read."""
    read = [r[layer] is None or r[layer] < topk for r in ranks for layer in layers]
    return sum(read) / len(read)


def show(entry: dict, key: str, fmt: str) -> str:
    return fmt.format(entry[key]) if entry.get(key) is not None else "-"


def plot(rows: list[tuple[tuple[str, int], list[dict]]], out: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for (method, length), group in rows:
        if "mass" in group[0]:
            per_layer = torch.tensor([r["mass"] for r in group]).amax(dim=2).mean(dim=0)
            axes.plot(per_layer.tolist(), marker="o", markersize=3, label=f"{method} at {length}")
    axes.set(
        xlabel="layer",
        ylabel="mass on the needle (best head, mean)",
        yscale="log",
        title="What the answer's first digit puts on the needle",
    )
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "needle-mass.png", dpi=120)
    plt.close(figure)
    memory = [(key, group) for key, group in rows if "ranks" in group[0]]
    if memory:
        figure, axes = plt.subplots(figsize=(8, 4.5))
        for (method, length), group in memory:
            ranks = [
                statistics.median(r["ranks"][layer] or 0 for r in group) for layer in range(len(group[0]["ranks"]))
            ]
            axes.plot(ranks, marker="o", markersize=3, label=f"{method} at {length}")
        axes.axhline(group[0]["topk"] - 0.5, color="grey", linestyle="--", label="read (top-k)")
        axes.set(
            xlabel="layer",
            ylabel="rank of the needle's block (median)",
            yscale="symlog",
            title="Where InfLLM's retrieval ranks the needle's block",
        )
        axes.set_ylim(bottom=0)
        axes.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out / "infllm-rank.png", dpi=120)
        plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", action="append", default=[], help="a spec; repeatable")
    parser.add_argument("--length", default="16k")
    parser.add_argument("--control-length", default="6k", help="the same facts inside the trained length")
    parser.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9")
    parser.add_argument("--samples", type=int, default=1, help="per depth")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only-sample",
        type=int,
        action="append",
        help="run only this sample index (repeatable): splits a run into lanes",
    )
    parser.add_argument("--text", action="append", help="a book to hide facts in; repeatable (required to run)")
    parser.add_argument("--out", type=Path, default=Path("results/needle-diagnosis"))
    parser.add_argument("--compare-out", type=Path, help="also record each answer as a compare cell there")
    parser.add_argument("--summary-only", action="store_true", help="table and plots of what is recorded")
    args = parser.parse_args()
    if not args.summary_only and not args.text:
        parser.error("--text BOOK is required to run (give each book; --summary-only reads what is recorded)")
    length, control_length = parse_length(args.length), parse_length(args.control_length)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "diagnosis.jsonl"
    records = read_records(path)
    console = Console(width=160)
    if not args.summary_only:
        model, tokenizer = longreach.load_model(args.model)
        trained = trained_length(model.config)
        task = NaturalNeedleTask(depths=tuple(float(d) for d in args.depths.split(",")), texts=tuple(args.text))
        done = {(r["method"], r["length"], r["depth"], r["index"], r["text"]) for r in records}
        runs = [(CONTROL, None, control_length)] + [
            (spec, parse_method(spec, target_length=length, trained_length=trained), length) for spec in args.method
        ]
        for spec, method, _ in runs[1:]:
            if method.attention != "memory" and evicts(method.parts()):
                parser.error(f"{spec}: a method whose cache drops keys cannot be probed (keys are not at their index)")
        # The facts of the compare run at --length, each asked at every length here.
        facts = [
            f for f in task.facts(length, args.samples, args.seed) if not args.only_sample or f[1] in args.only_sample
        ]
        for spec, method, run_length in runs:
            for depth, index, fact in facts:
                key = (spec, run_length, depth, index, fact.text.name)
                if key in done:
                    continue
                sample = task.sample(tokenizer, run_length, depth, index, fact)
                ids = sample.prompt_ids
                started = time.perf_counter()
                record = diagnose(model, tokenizer, method, ids, fact, task.max_new_tokens)
                seconds = round(time.perf_counter() - started, 3)
                if args.compare_out is not None and method is not None:
                    cell = sample_record(sample, task, record["answer"].strip())
                    run = {"model": args.model, "seed": args.seed, "versions": versions(), "seconds": seconds}
                    append_record(
                        args.compare_out / "results.jsonl", {**cell, "method": spec, "settings": method.spec(), **run}
                    )
                record.update(
                    method=spec,
                    settings=method.spec() if method else CONTROL,
                    length=run_length,
                    depth=depth,
                    index=index,
                    text=fact.text.name,
                    value=fact.value,
                )
                append_record(path, record)
                records.append(record)
                say_answer(console, f"{spec} {run_length}", record)
    summarize(records, args.out, console)


if __name__ == "__main__":
    main()
