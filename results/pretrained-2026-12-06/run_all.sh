#!/bin/bash
# The pretrained-cpu study, one model at a time (the elongated Longformer first: the issue's
# bars are on it), resumable: rerun this script after a stop and finished (model, task)
# entries are kept.
set -u
cd "$(dirname "$0")/../.."
log=results/pretrained-2026-12-06/study.log
for model in minilm-longformer minilm minilm-linformer; do
    python scripts/run_study.py --preset pretrained-cpu --data_dir ../shared/data \
        --output_dir runs/pretrained --models "$model" --resume >>"$log" 2>&1
    echo "$(date -u +%FT%TZ) $model exit $?" >>"$log"
done
