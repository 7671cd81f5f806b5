#!/usr/bin/env bash
# The in-context-learning study of Yousefi et al. (2023, arXiv 2310.00313),
# small, on SmolLM2-135M: for each task of eval/icl (made by make_tasks.py),
#   - attention ratios (query → relevant / irrelevant), no_examples vs with_examples
#     (reading comprehension and prompt injection; regression prompts without
#     examples have no relevant span);
#   - RSA of the query span against the `condition` hypothesis (all prompts) and,
#     where labels vary, against the `label` hypothesis within each condition;
#   - layer-wise probes (ridge on `value` for regression, logistic on `label`
#     for reading comprehension) within each condition;
# then eval/icl/make_report.py writes eval/icl/results.md and copies the figures.
#
#   bash eval/icl/run_study.sh [OUT]      (default out/icl; ~5 min on 2 cores)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-$ROOT/out/icl}"
BIN="$ROOT/target/release/saescope"
[ -x "$BIN" ] || (cd "$ROOT" && bash scripts/setup.sh)
common=(--model smollm2-135m --threads 2)
mkdir -p "$OUT"
start=$(date +%s)
for task in linear_regression reading_comprehension prompt_injection; do
  set_file="$ROOT/eval/icl/$task.jsonl"
  t0=$(date +%s)
  # Regression prompts without examples have no relevant span: no ratio there.
  if [ "$task" != linear_regression ]; then
    "$BIN" attention-ratio --prompts "$set_file" "${common[@]}" --out "$OUT/$task/ratio"
  fi
  "$BIN" rsa --prompts "$set_file" "${common[@]}" --span query --hypothesis condition \
    --permutations 1000 --out "$OUT/$task/rsa_condition"
  for condition in no_examples with_examples; do
    case "$task" in
      linear_regression)
        "$BIN" rsa --prompts "$set_file" "${common[@]}" --span query --condition "$condition" \
          --hypothesis label --permutations 1000 --out "$OUT/$task/rsa_label_$condition"
        "$BIN" probe --prompts "$set_file" "${common[@]}" --span query --condition "$condition" \
          --target value --l2 100 --out "$OUT/$task/probe_$condition" ;;
      reading_comprehension)
        "$BIN" rsa --prompts "$set_file" "${common[@]}" --span query --condition "$condition" \
          --hypothesis label --permutations 1000 --out "$OUT/$task/rsa_label_$condition"
        "$BIN" probe --prompts "$set_file" "${common[@]}" --span query --condition "$condition" \
          --target label --l2 100 --out "$OUT/$task/probe_$condition" ;;
    esac
  done
  echo "$task: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/timings.txt"
done
echo "total: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
"$ROOT/.venv/bin/python" "$ROOT/eval/icl/make_report.py" "$OUT"
