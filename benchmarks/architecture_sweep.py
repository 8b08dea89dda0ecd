"""Every causal-LM family transformers knows, built tiny from its config: does LongReach extend it?

    .venv/bin/python benchmarks/architecture_sweep.py --out docs/benchmarks/architectures.json

Per model type: a random-weight model with small dimensions (families whose defaults stay above
``--max-params`` even so, and multimodal ones, are skipped); the model's own forward must run;
then SelfExtend(3, 6) is applied and a 40-token input read in one call is compared with the same
input read as 8 tokens and then one token at a time through the cache. Outcomes: ``exact`` (the
two agree within 1e-4), ``differs``, ``refused`` (LongReach names the reason), ``error`` (anything
else). Prints a table and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
import transformers
from rich.console import Console
from rich.progress import track
from rich.table import Table
from transformers import DynamicCache
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

import longreach
from longreach.integrations.transformers.forward_args import cache_kwargs

SMALL = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    head_dim=16,
    rotary_dim=8,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def forward(model, ids, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, **kwargs).logits


def check(model_type: str, max_params: int) -> dict:
    try:
        config = CONFIG_MAPPING[model_type](**SMALL)
        if config.get_text_config() is not config:
            return {"outcome": "skipped", "detail": "multimodal"}
        with torch.device("meta"):
            params = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(config).parameters())
        if params > max_params:
            return {"outcome": "skipped", "detail": f"{params:,} parameters even when small"}
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
        ids = torch.randint(3, 100, (1, 40))
        forward(model, ids)
    except Exception as error:  # the family's own code, not ours
        return {"outcome": "skipped", "detail": f"the plain model fails: {type(error).__name__}"}
    try:
        longreach.extend(model, longreach.SelfExtend(3, 6))
        at_once = forward(model, ids)
        cache = DynamicCache(config=model.config)
        steps = [
            forward(model, ids[:, a:b], use_cache=True, **cache_kwargs(model, cache))
            for a, b in [(0, 8), *((i, i + 1) for i in range(8, 40))]
        ]
        difference = float((torch.cat(steps, dim=1) - at_once).abs().max())
    except longreach.UnsupportedModelError as error:
        return {"outcome": "refused", "detail": str(error)}
    except Exception as error:
        return {"outcome": "error", "detail": f"{type(error).__name__}: {error}"[:300]}
    return {"outcome": "exact" if difference <= 1e-4 else "differs", "detail": f"max difference {difference:.1e}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-params", type=int, default=60_000_000)
    parser.add_argument("--out", default="results/architectures.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    results = {}
    for model_type in track(sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), description="families"):
        results[model_type] = check(model_type, args.max_params)
    table = Table(title=f"LongReach on transformers {transformers.__version__}'s causal-LM families")
    for column in ("model type", "outcome", "detail"):
        table.add_column(column, overflow="fold")
    for model_type, result in results.items():
        if result["outcome"] != "skipped":
            table.add_row(model_type, result["outcome"], result["detail"][:100])
    console = Console()
    console.print(table)
    counts = {
        o: sum(r["outcome"] == o for r in results.values()) for o in ("exact", "differs", "refused", "error", "skipped")
    }
    console.print(counts)
    output = Path(args.out)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps({"transformers": transformers.__version__, "counts": counts, "results": results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
