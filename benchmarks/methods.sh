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
#   benchmarks/methods.sh infllm-passkey           # InfLLM at 16k-128k
#   benchmarks/methods.sh infllm-stream            # 256k tokens of novels through InfLLM
#   benchmarks/methods.sh compare [METHOD ...]     # issue 5: every task, one method at a time
#   benchmarks/methods.sh natural LENGTHS METHOD... # facts told in the ten novels of shared/data/texts
#
# EXTRA="--samples 2" adds CLI arguments to every call; LENGTHS=4k,8k,16k,32k and DEPTHS=... override
# the passkey and compare grids (a 32k sample of a full-coverage method is ~20 min on one thread),
# TASKS=... compare's tasks (e.g. LENGTHS=4k,8k first, so that every method's short cells land early).
set -euo pipefail
cd "$(dirname "$0")/.."
LONGREACH=.venv/bin/longreach
TEXT=${TEXT:-../shared/data/texts/Stevenson_Treasure_1883.txt}
EXTRA=${EXTRA:-}
# Priority order: the foundation's comparison first, then the full-coverage plans, the sparse
# ones (cheap), and the RoPE-scaling baselines last.
ALL="self-extend:auto vanilla dual-chunk:auto lm-infinite:auto streaming-llm:auto rerope:auto leaky-rerope:auto
linear:auto dynamic-ntk:auto yarn:auto"
PASSKEY_LENGTHS=${LENGTHS:-4k,8k,12k,16k,24k,32k}
COMPARE_LENGTHS=${LENGTHS:-4k,8k,16k,32k}
TASKS=${TASKS:-passkey,niah,niah-text,ruler,ppl}
DEPTHS=${DEPTHS:-0.1,0.3,0.5,0.7,0.9}

step=${1:-}
shift || true
chosen=${*:-$ALL}
as_options() { for m in "$@"; do printf -- "--method %s " "$m"; done; }

case "$step" in
  passkey)
    # The passkey command writes compare records (results.jsonl); the folder's older passkey.jsonl
    # is imported first (again each time: a no-op once done), so nothing measured runs again.
    .venv/bin/python benchmarks/import_results.py docs/benchmarks/passkey-methods \
      docs/benchmarks/passkey-methods/passkey.jsonl
    # One method at a time over every length, so each method's row completes early.
    for m in $chosen; do
      # shellcheck disable=SC2086
      $LONGREACH passkey --model smollm2-135m --method "$m" --lengths "$PASSKEY_LENGTHS" --depths "$DEPTHS" \
        --out docs/benchmarks/passkey-methods $EXTRA
    done
    ;;
  perplexity)
    # As for passkey: the older perplexity.jsonl first, every prefix kept (the command reads them so).
    .venv/bin/python benchmarks/import_results.py --prefixes docs/benchmarks/perplexity-methods \
      docs/benchmarks/perplexity-methods/perplexity.jsonl
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
      --method lm-infinite:local_window=2048,n_global=10,distance_limit=8192 --method infllm:auto \
      --out docs/benchmarks/speed-methods.json $EXTRA
    ;;
  infllm-passkey)
    .venv/bin/python benchmarks/import_results.py docs/benchmarks/passkey-infllm \
      docs/benchmarks/passkey-infllm/passkey.jsonl
    # shellcheck disable=SC2086
    $LONGREACH passkey --model smollm2-135m --method infllm:auto --lengths 16k,32k,64k,128k --depths "$DEPTHS" \
      --out docs/benchmarks/passkey-infllm $EXTRA
    ;;
  infllm-stream)
    # Four novels make more than 256k tokens; blocks go to a memory-mapped file, so RAM stays flat.
    # shellcheck disable=SC2086
    .venv/bin/python benchmarks/infllm_stream.py --text ../shared/data/texts/{Stevenson_Treasure_1883,Doyle_Hound_1902,Conrad_Almayer_1895,Chesterton_Thursday_1908,Kipling_Captains_1896}.txt \
      --length 256k --checkpoints 32k,64k,128k,256k --method infllm:n_local=4096,storage=mmap \
      --out docs/benchmarks/infllm-stream $EXTRA
    ;;
  compare)
    # Passkey and perplexity cells already measured by the steps above are imported, not rerun
    # (same prompts, same text), before each method, so that a passkey lane running beside this
    # one saves work here too. Tens of CPU hours in all: a GPU job where one is lent.
    # The results.jsonl of those folders hold what the passkey and perplexity commands measured
    # since they write compare records (perplexity prefixes of other settings are left out).
    for m in ${*:-vanilla self-extend:auto dual-chunk:auto lm-infinite:auto streaming-llm:auto rerope:auto infllm:auto}; do
      sources=()
      for f in docs/benchmarks/{passkey-methods,passkey-infllm,perplexity-methods}/{passkey,perplexity,results}.jsonl; do
        if [ -f "$f" ]; then sources+=("$f"); fi
      done
      .venv/bin/python benchmarks/import_results.py docs/benchmarks/compare "${sources[@]}"
      # shellcheck disable=SC2086
      $LONGREACH compare --model smollm2-135m --method "$m" --tasks "$TASKS" \
        --lengths "$COMPARE_LENGTHS" --depths "$DEPTHS" --text "$TEXT" --out docs/benchmarks/compare $EXTRA
    done
    ;;
  natural)
    # Issue 28: niah-natural with each prompt in one of the novels, in turn (five depths x
    # --samples, each wording once per five prompts), one method at a time over LENGTHS.
    lengths=$1
    shift
    texts=()
    for f in ../shared/data/texts/*.txt; do texts+=(--text "$f"); done
    for m in "$@"; do
      # shellcheck disable=SC2086
      $LONGREACH compare --model smollm2-135m --method "$m" --tasks niah-natural --lengths "$lengths" \
        --depths "$DEPTHS" "${texts[@]}" --out docs/benchmarks/natural $EXTRA
    done
    ;;
  *)
    echo "usage: benchmarks/methods.sh passkey|perplexity|speed|infllm-passkey|infllm-stream|compare|natural [METHOD ...]" >&2
    exit 2
    ;;
esac
