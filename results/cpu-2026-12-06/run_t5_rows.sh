#!/usr/bin/env bash
# T5's rows in REPORT.md's QA and classification tables (issue 23): the same commands as the
# squad-* and imdb-*-256 rows of results/cpu-2026-11-2[23]/, with --model_type t5 and the shared
# size in T5's field names (2 encoder + 2 decoder layers, 256 wide, 4 heads of 64, relu
# feed-forward of 1,024, dropout 0.1 like the longctx rows' hidden and attention dropout).
# Run from the repository root; the runs are copied into this folder afterwards.
set -euo pipefail
T5_SIZE=d_model=256,num_layers=2,num_decoder_layers=2,num_heads=4,d_kv=64,d_ff=1024,feed_forward_proj=relu,dropout_rate=0.1
TOKENIZER=runs/tokenizers/imdb-bpe-8k
DATA=../shared/data

python scripts/run_qa.py --model_type t5 --config_overrides $T5_SIZE --tokenizer_name $TOKENIZER \
    --squad_file $DATA/squad/dev-v1.1.json.gz --eval_articles 10 --max_seq_length 384 \
    --doc_stride 128 --do_train --do_eval --per_device_train_batch_size 16 \
    --per_device_eval_batch_size 64 --learning_rate 5e-4 --warmup_steps 60 --weight_decay 0.01 \
    --num_train_epochs 1 --logging_steps 50 --save_strategy no --report_to none --seed 0 \
    --disable_tqdm true --output_dir runs/squad-t5

python scripts/run_classification.py --model_type t5 --config_overrides $T5_SIZE \
    --tokenizer_name $TOKENIZER --train_file $DATA/imdb/train.parquet \
    --validation_file $DATA/imdb/test.parquet --max_seq_length 256 --do_train --do_eval \
    --per_device_train_batch_size 16 --per_device_eval_batch_size 64 --learning_rate 5e-4 \
    --warmup_steps 150 --weight_decay 0.01 --num_train_epochs 1 --logging_steps 100 \
    --save_strategy no --report_to none --seed 0 --disable_tqdm true --output_dir runs/imdb-t5-256
