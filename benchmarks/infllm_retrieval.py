"""Where InfLLM's retrieval ranks the passkey's block when the question is read, layer by layer.

    .venv/bin/python benchmarks/infllm_retrieval.py --length 64k --depth 0.5

Builds the passkey prompt of `longreach passkey` (same seed, key and filler), reads it with
InfLLM through the cache, and records the relevance `select_blocks` gives every block at each
call (watching it, not changing it). For the question's execution block it prints, per layer, the
rank of each block holding part of the key among all blocks (0 = first; retrieval reads the top
`topk`), and how many distinct representatives the top `topk` hold (repeated filler could make
duplicates crowd out the needle). Then it generates the answer as the passkey benchmark does and
prints, for the answer's first tokens, the top three against the key's own token.
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

import longreach
from longreach.engine.memory import attend as memory_attention
from longreach.eval.passkey import PASSKEY_NEW_TOKENS, passkey_key, passkey_prompt, score_answer
from longreach.integrations.transformers.forward_args import cache_kwargs
from longreach.methods import parse_length, parse_method
from longreach.models.config import trained_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", default="infllm:auto")
    parser.add_argument("--length", default="64k")
    parser.add_argument("--depth", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    length = parse_length(args.length)
    model, tokenizer = longreach.load_model(args.model)
    method = parse_method(args.method, target_length=length, trained_length=trained_length(model.config))
    if method.attention != "memory":
        parser.error(f"--method must be an InfLLM spec (a block memory to watch), got {args.method!r}")
    longreach.extend(model, method)
    key = passkey_key(args.seed, length, args.depth, 0)
    ids = torch.tensor([passkey_prompt(tokenizer, length, args.depth, key)])
    needle = tokenizer(f" {key}", add_special_tokens=False).input_ids
    start = next(i for i in range(ids.shape[1]) if ids[0, i : i + len(needle)].tolist() == needle)
    # A block boundary can split the needle (at depth 0.5 the digits start a block): rank each part.
    needle_blocks = sorted({(p - method.n_init) // method.block_size for p in range(start, start + len(needle))})

    calls = []
    select = memory_attention.select_blocks

    def watched(memory_queries, store, topk, *ranking):
        calls.append((memory_attention.block_relevance(memory_queries, store, *ranking)[0], store.representatives[0]))
        return select(memory_queries, store, topk, *ranking)

    memory_attention.select_blocks = watched
    cache = longreach.prefill(model, ids)  # all but the last execution block, which holds the question
    calls.clear()
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=PASSKEY_NEW_TOKENS,
            pad_token_id=tokenizer.eos_token_id,
            **cache_kwargs(model, cache),
            output_scores=True,
            return_dict_in_generate=True,
        )
    memory_attention.select_blocks = select
    answer = tokenizer.decode(out.sequences[0, ids.shape[1] :], skip_special_tokens=True).strip()
    question = calls[: model.config.num_hidden_layers]  # one call per layer for the question's block
    table = Table(
        title=f"{method.spec()} at {length} tokens, depth {args.depth}: needle in block(s) "
        f"{needle_blocks} (key tokens {start}-{start + len(needle) - 1})"
    )
    for column in ("layer", "blocks", "needle rank per block", f"distinct in top {method.topk}"):
        table.add_column(column, justify="right")
    for layer, (relevance, representatives) in enumerate(question):
        order = relevance.argsort(descending=True)
        rank = ", ".join(
            f"{b}: {int((order == b).nonzero())}" if b < relevance.numel() else f"{b}: held" for b in needle_blocks
        )
        top = order[: method.topk].tolist()
        distinct = len({tuple(representatives[:, b].flatten().tolist()) for b in top})
        table.add_row(str(layer), str(relevance.numel()), rank, str(distinct))
    console = Console()
    console.print(table)
    # What comes with the needle: the blocks the last layer reads (neighbours of the needle give it context).
    last = question[-1][0].argsort(descending=True)[: method.topk].sort().values.tolist()
    console.print(f"blocks the last layer reads: {last}")
    console.print(f"key {key}, answer {answer!r}: {'right' if score_answer(answer, key) else 'wrong'}")
    # How near a miss is: at each of the answer's first steps, the top three against the key's token
    # (the needle's tokens: " 12345" starts with a space token, then digits).
    for step, (scores, token) in enumerate(zip(out.scores[:3], needle, strict=False)):
        probs = torch.softmax(scores[0].float(), dim=-1)
        top = probs.topk(3)
        shown = ", ".join(
            f"{tokenizer.decode([t])!r} {p:.3f}" for p, t in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        )
        expected = f"{tokenizer.decode([token])!r} {float(probs[token]):.3f}"
        console.print(f"answer token {step}: {shown}; the key's {expected}")


if __name__ == "__main__":
    main()
