#!/usr/bin/env bash
# The methods benchmark (docs/results.md): passkey, perplexity by position and speed for every
# method on the embedded model. Many hours of CPU on 2 cores, so results go to tracked folders
# under docs/benchmarks/ (commit them as they come in): every step resumes from what is recorded
# there, in this session or a later one. Run speed alone on the machine (timings); passkey and
# perplexity can run as two single-threaded lanes side by side (OMP_NUM_THREADS=1 each).
#
#   benchmarks/methods.sh passkey [METHOD ...]      # default: every method, in priority order
#   benchmarks/methods.sh perplexity [METHOD ...]
#   benchmarks/methods.sh speed
#
# EXTRA="--samples 2" adds CLI arguments to every call.
set -euo pipefail
cd "$(dirname "$0")/.."
LONGREACH=.venv/bin/longreach
TEXT=${TEXT:-../shared/data/texts/Stevenson_Treasure_1883.txt}
EXTRA=${EXTRA:-}
# Priority order: the foundation's comparison first, then the full-coverage plans, the sparse
# ones (cheap), and the RoPE-scaling baselines last.
ALL="self-extend:auto vanilla dual-chunk:auto lm-infinite:auto streaming-llm:auto rerope:auto leaky-rerope:auto
linear:auto dynamic-ntk:auto yarn:auto"
LENGTHS=4k,8k,12k,16k,24k,32k
DEPTHS=0.1,0.3,0.5,0.7,0.9

step=${1:-}
shift || true
chosen=${*:-$ALL}
as_options() { for m in "$@"; do printf -- "--method %s " "$m"; done; }

case "$step" in
  passkey)
    # One method at a time over every length, so each method's row completes early.
    for m in $chosen; do
      # shellcheck disable=SC2086
      $LONGREACH passkey --model smollm2-135m --method "$m" --lengths "$LENGTHS" --depths "$DEPTHS" \
        --out docs/benchmarks/passkey-methods $EXTRA
    done
    ;;
  perplexity)
    for m in $chosen; do
      # shellcheck disable=SC2086
      $LONGREACH perplexity --model smollm2-135m --method "$m" --text "$TEXT" --lengths 4k,8k,16k,32k \
        --out docs/benchmarks/perplexity-methods $EXTRA
    done
    ;;
  speed)
    .venv/bin/python benchmarks/prefill_speed.py --lengths 8k,16k,32k --method vanilla \
      --method self-extend:auto --method dual-chunk:auto --method rerope:auto \
      --method lm-infinite:auto --method streaming-llm:auto \
      --method lm-infinite:local_window=2048,n_global=10,distance_limit=8192 \
      --out docs/benchmarks/speed-methods.json $EXTRA
    ;;
  *)
    echo "usage: benchmarks/methods.sh passkey|perplexity|speed [METHOD ...]" >&2
    exit 2
    ;;
esac
