#!/usr/bin/env bash
# The speed tables of docs/results/real-small.md: benchmarks/speculative.py on each task's evaluated prompts, batch 1
# and batch 8, on what a `snakemake --configfile configs/real-small.yaml` run made (the converted SmolLM2, calm's
# translator-rule heads, the translators, the task data, the draft vocabulary). Speculative at THRESHOLDS (default
# 0.5,0.7,0.9: lossless whatever the threshold) and max_draft 4, drafting through the draft vocabulary (VOCABS:
# 'none,results/...' adds the full LM head); the lossy exit
# decoder at the task's no-loss point (LOSSY_TABLE, default results/tables/no_loss.csv: the highest-CRF threshold of
# calm / recompute / translator with no loss on every metric of the task; 0.9, the grid's highest, where none
# qualifies); at batch 1 also transformers' assistant_early_exit at the blocks AEE names (default 26, the last exit).
# Answers are capped at MAX_NEW_TOKENS (default: the evaluation's, from configs/real-small.yaml). One JSON per
# (task, batch size) into docs/results/real-small/speed/ and from them speedup_vs_crf.png (benchmarks/speed_figure.py),
# which `snakemake results_page --configfile configs/real-small.yaml` turns into the page's speed tables.
#   bash benchmarks/real_small_speed.sh            (from the project root, the run's results/ in place)
# N_PROMPTS (default 16) and REPEATS (default 2) set the size, THREADS (default 2) the torch threads, TASKS and
# BATCHES (default all three, 1 and 8; empty: none) what runs.
set -euo pipefail
N_PROMPTS=${N_PROMPTS:-16}
REPEATS=${REPEATS:-2}
AEE=${AEE:-26}
LOSSY_TABLE=${LOSSY_TABLE:-results/tables/no_loss.csv}
THREADS=${THREADS:-2}
TASKS=${TASKS-triviaqa coqa truthfulqa}
THRESHOLDS=${THRESHOLDS:-0.5,0.7,0.9}
VOCABS=${VOCABS:-results/draft_vocab/smollm2/draft_vocab.json}
BATCHES=${BATCHES-1 8}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-$(python -c \
    "import yaml; print(yaml.safe_load(open('configs/real-small.yaml'))['evaluation']['max_new_tokens'])")}
OUT=docs/results/real-small/speed
R=results
mkdir -p "$OUT"

# The lossy no-loss point per task, from the run's own table.
lossy_threshold() {
    python - "$1" "$LOSSY_TABLE" <<'EOF'
import sys
import pandas as pd
task = sys.argv[1]
table = pd.read_csv(sys.argv[2])
rows = table[(table["task"] == task) & (table["series"] == "calm / recompute / translator")]
# no loss on every metric of the task (CoQA: EM and F1)
rows = rows.groupby("threshold").filter(lambda g: set(g["metric"]) == set(table[table["task"] == task]["metric"]))
print(f"{rows.sort_values('crf_exact').iloc[-1]['threshold']:g}" if len(rows) else "0.9")
EOF
}

for task in $TASKS; do
    fewshot=()
    [[ $task == triviaqa ]] && fewshot=(--fewshot-data "$R/data/triviaqa_train.jsonl")
    data="$R/data/$task.jsonl"
    [[ $task == coqa ]] && data="$R/data/coqa.json"
    lossy=$(lossy_threshold "$task")
    for batch in $BATCHES; do
        aee=()
        [[ $batch == 1 ]] && aee=(--assistant-early-exit "$AEE")
        python benchmarks/speculative.py --backbone "$R/backbones/smollm2" \
            --heads "$R/heads/smollm2/head~calm/emission~translator" --emission translator \
            --translators "$R/translators/smollm2" --task "$task" --data "$data" "${fewshot[@]}" \
            --n-prompts "$N_PROMPTS" --max-new-tokens "$MAX_NEW_TOKENS" --batch-size "$batch" --lossy-threshold "$lossy" --thresholds "$THRESHOLDS" \
            --max-drafts 4 --draft-vocabs "$VOCABS" "${aee[@]}" \
            --threads "$THREADS" --repeats "$REPEATS" --out "$OUT/${task}_batch${batch}.json"
    done
done
# Measured speedup beside the MAC-based CRF, from the JSONs above (not the folder's other benchmarks: climb_*.json).
shopt -s nullglob
speed_jsons=("$OUT"/{triviaqa,coqa,truthfulqa}_batch*.json)
batch1_jsons=("$OUT"/{triviaqa,coqa,truthfulqa}_batch[1].json)  # a glob: the tasks run
python benchmarks/speed_figure.py "${speed_jsons[@]}" --out "$OUT/speedup_vs_crf.png"

# The timing model (benchmarks/speculative_7b.py): a cycle's pieces timed on random weights, composed with the
# acceptance and accepted lengths BORROWED from the batch-1 JSONs. At Mistral-7B's shapes in bf16 (SmolLM2's exits
# 14/18/22/26 of 30 mapped by index onto 15/19/23/28 of 32; SEVEN_B=0 leaves it out), and at SmolLM2's own shapes in
# float32 (SMALL_SHAPES=0 leaves it out): the ceiling of the mode on this hardware, with its `ideal` cycles of up to
# 8 drafts all accepted, and the model checked against the measured rows. TASKS= BATCHES= runs only the figure and
# these.
borrowed=()
for f in "${batch1_jsons[@]}"; do borrowed+=(--borrowed "$f"); done
if [[ ${SEVEN_B:-1} == 1 ]]; then
    python benchmarks/speculative_7b.py "${borrowed[@]}" --exit-layers 15,19,23,28 --threads "$THREADS" \
        --repeats 3 --out "$OUT/speculative_7b.json"
fi
if [[ ${SMALL_SHAPES:-1} == 1 ]]; then
    python benchmarks/speculative_7b.py --preset smollm2-135m --blocks 30 --dtype float32 "${borrowed[@]}" \
        --exit-layers 14,18,22,26 --max-positions 9 --prompt-len 256 --threads "$THREADS" --repeats 15 \
        --out "$OUT/speculative_smollm2.json"
fi
