"""The seed study: trains every longctx architecture and transformers' T5 (hf-t5) at one size
and budget, prints one table, and draws beside study_results.json a confusion matrix per
classifier (confusion_matrices.png) and the LM loss by position in the block
(lm_loss_by_position.png).

    python scripts/run_study.py                 # preset "smoke": a few minutes on CPU
    python scripts/run_study.py --architectures longctx-transformer --max_steps 2  # a quick one
    # real data, ~2 h 15 min on 2 CPU cores; --resume goes on after a stop
    python scripts/run_study.py --preset cpu --data_dir ../shared/data [--resume]
    python scripts/run_study.py --preset gpu-lra --data_dir ../shared/data  # a CUDA GPU, hours
    # all-MiniLM-L6-v2 as it is and elongated to Longformer and Linformer, IMDb and SQuAD
    python scripts/run_study.py --preset pretrained-cpu --data_dir ../shared/data [--resume]

The pretrained presets (pretrained-cpu, pretrained-tiny) take the options of
`python -m longctx.experiments.pretrained_study` (--models, --tasks, --source, --budget, ...),
where their logic lives.

--data_dir is a folder laid out like ../shared/data: imdb/train.parquet, imdb/test.parquet
(columns text, label), books/austen-emma.txt (training book), books/austen-sense.txt (held-out
book). Without it a real-data preset stops with an error: the books have no Hugging Face Hub
fallback (IMDb alone would come from the Hub).

Writes `study_results.json` to --output_dir after each architecture, so a stopped run keeps
what it finished; --resume runs only the architectures that file lacks (or that failed).
Without --resume, an --output_dir that has that file is refused unless --overwrite_output_dir.
The logic lives in `longctx/experiments/study.py`.
"""

import argparse
import sys
from pathlib import Path

try:
    import longctx  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from longctx.experiments import pretrained_study, study
from longctx.experiments.measure import failed


def parse_args(argv=None):
    presets = "\n".join(f"  {name:8} {preset.description}"
                        for name, preset in {**study.PRESETS,
                                             **pretrained_study.PRETRAINED_PRESETS}.items())
    parser = argparse.ArgumentParser(description=__doc__, epilog="presets:\n" + presets,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smoke", choices=sorted(study.PRESETS),
                        help="sizes, data, budget and device (default: smoke; listed below)")
    parser.add_argument("--output_dir", default="runs/study",
                        help="where study_results.json goes (default: runs/study)")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="training steps per task, overriding the preset (at least 2)")
    parser.add_argument("--data_dir", default=None,
                        help="real data for the cpu and gpu-lra presets, laid out like "
                             "../shared/data")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--architectures", default=None,
                        help="comma-separated model types (default: every one in "
                             "longctx.ARCHITECTURES, then hf-t5: transformers' T5)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished architectures of --output_dir's "
                             "study_results.json (same preset, data and seed) and run only the "
                             "others: a long preset can stop and go on later")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="without --resume: replace --output_dir's study_results.json "
                             "(refused otherwise)")
    args = parser.parse_args(argv)
    if args.max_steps is not None and args.max_steps < 2:
        parser.error("--max_steps must be at least 2 (the first step is a warm-up, excluded from "
                     "the throughput)")
    return args


def named_preset(argv) -> str | None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--preset")
    return parser.parse_known_args(argv)[0].preset


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if named_preset(argv) in pretrained_study.PRETRAINED_PRESETS:  # its own options
        return pretrained_study.main(argv)
    args = parse_args(argv)
    try:
        results = study.run_study(preset=args.preset, output_dir=args.output_dir,
                                  max_steps=args.max_steps, seed=args.seed,
                                  architectures=args.architectures, data_dir=args.data_dir,
                                  resume=args.resume, overwrite=args.overwrite_output_dir)
    except ValueError as error:  # e.g. an unknown architecture name, missing data, no GPU
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1 if failed(results) else 0


if __name__ == "__main__":
    sys.exit(main())
