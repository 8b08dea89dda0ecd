"""Where an InfLLM stream's resident memory goes on CPU: the process's RSS against what the C heap
holds in use and free, every 4k tokens, with and without releasing the heap before each block.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/infllm_heap.py --length 32k
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/infllm_heap.py --length 32k --keep-free-heap

Reads novels in execution blocks like ``infllm_stream.py`` (full logits and the loss of every
token, blocks in a memory-mapped file). RSS is taken as a block starts (after the release) and
after it (with that block's freed activations still resident). glibc only (``mallinfo2``).
"""

from __future__ import annotations

import argparse
import ctypes
from pathlib import Path

import torch
from infllm_stream import rss_gib
from transformers import DynamicCache

from longreach.integrations.transformers.forward_args import cache_kwargs


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def main() -> None:
    import longreach
    from longreach.integrations.transformers import install
    from longreach.methods import parse_length, parse_method
    from longreach.models.config import trained_length

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", default="32k")
    parser.add_argument("--method", default="infllm:n_local=4096,storage=mmap")
    parser.add_argument(
        "--text",
        nargs="+",
        default=[f"../shared/data/texts/{name}.txt" for name in ("Stevenson_Treasure_1883", "Doyle_Hound_1902")],
    )
    parser.add_argument("--keep-free-heap", action="store_true", help="do not release the heap (the old behaviour)")
    args = parser.parse_args()

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    if args.keep_free_heap:
        install.release_free_heap = lambda: False
    length = parse_length(args.length)
    model, tokenizer = longreach.load_model("smollm2-135m")
    method = parse_method(args.method, target_length=length, trained_length=trained_length(model.config))
    longreach.extend(model, method)
    text = "\n\n".join(Path(path).read_text() for path in args.text)
    ids = tokenizer(text, return_tensors="pt").input_ids[:, : length + 1]
    cache, losses = DynamicCache(config=model.config), []
    # Registered after extend()'s own hook, so it sees RSS once the heap has been released.
    at_start = []
    model.base_model.register_forward_pre_hook(lambda *_: at_start.append(rss_gib()))
    cache_argument = cache_kwargs(model, cache)
    print("tokens  RSS at block start MiB  RSS after block MiB  heap in use MiB  heap free MiB")
    for start in range(0, length, method.exec_block):
        stop = start + method.exec_block
        with torch.no_grad():
            logits = model(ids[:, start:stop], use_cache=True, **cache_argument).logits[0].float()
        losses.append(-torch.log_softmax(logits, -1).gather(1, ids[0, start + 1 : stop + 1, None]).squeeze(1))
        if stop % 4096 == 0:
            heap = libc.mallinfo2()
            print(
                f"{stop:6d}  {1024 * at_start[-1]:22.0f}  {1024 * rss_gib():19.0f}  {heap.uordblks / 2**20:15.0f}  "
                f"{heap.fordblks / 2**20:13.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
