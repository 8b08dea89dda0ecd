#!/usr/bin/env bash
# The methods benchmark (docs/results.md): passkey, perplexity by position and speed for every
# method on the embedded model. Hours of CPU on 2 cores: every step resumes from its results, so
# run it again after an interruption and it continues where it stopped. Run speed alone on the
# machine (timings), the rest in any order.
#
#   benchmarks/methods.sh passkey|perplexity|speed [extra CLI arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
LONGREACH=.venv/bin/longreach
TEXT=${TEXT:-../shared/data/texts/Stevenson_Treasure_1883.txt}
PLANS="self-extend:auto dual-chunk:auto lm-infinite:auto streaming-llm:auto rerope:auto leaky-rerope:auto"
SCALING="linear:auto dynamic-ntk:auto yarn:auto"
methods() { for m in vanilla $PLANS $SCALING; do printf -- "--method %s " "$m"; done; }

case "${1:-}" in
  passkey)
    shift
    # Short lengths first, so every method has figures early.
    for lengths in 4k,8k 12k,16k 24k,32k; do
      # shellcheck disable=SC2046
      $LONGREACH passkey --model smollm2-135m $(methods) --lengths "$lengths" \
        --depths 0.1,0.3,0.5,0.7,0.9 --out results/passkey-methods "$@"
    done
    # shellcheck disable=SC2046
    $LONGREACH passkey --model smollm2-135m $(methods) --lengths 4k,8k,12k,16k,24k,32k \
      --depths 0.1,0.3,0.5,0.7,0.9 --out results/passkey-methods "$@"   # the summary table and plot
    ;;
  perplexity)
    shift
    # shellcheck disable=SC2046
    $LONGREACH perplexity --model smollm2-135m $(methods) --text "$TEXT" --lengths 4k,8k,16k,32k \
      --out results/perplexity-methods "$@"
    ;;
  speed)
    shift
    .venv/bin/python benchmarks/prefill_speed.py --lengths 8k,16k,32k --method vanilla \
      --method self-extend:auto --method dual-chunk:auto --method rerope:auto \
      --method lm-infinite:auto --method streaming-llm:auto \
      --method lm-infinite:local_window=2048,n_global=10,distance_limit=8192 \
      --out docs/benchmarks/speed-methods.json "$@"
    ;;
  *)
    echo "usage: benchmarks/methods.sh passkey|perplexity|speed [extra CLI arguments]" >&2
    exit 2
    ;;
esac
