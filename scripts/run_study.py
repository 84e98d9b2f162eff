"""The seed study: trains every longctx architecture at one size and budget, prints one table.

    python scripts/run_study.py                                   # preset "smoke": a few minutes on CPU
    python scripts/run_study.py --architectures longctx-transformer --max_steps 2 --output_dir /tmp/study

Writes `study_results.json` to --output_dir. The logic lives in `longctx/study.py`.
"""

import argparse
import sys
from pathlib import Path

try:
    import longctx  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from longctx import study


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smoke", choices=sorted(study.PRESETS),
                        help="sizes, data and budget (default: smoke)")
    parser.add_argument("--output_dir", default="runs/study",
                        help="where study_results.json goes (default: runs/study)")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="training steps per task, overriding the preset (at least 2)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--architectures", default=None,
                        help="comma-separated model types (default: every one in longctx.ARCHITECTURES)")
    args = parser.parse_args(argv)
    if args.max_steps is not None and args.max_steps < 2:
        parser.error("--max_steps must be at least 2 (the first step is a warm-up, excluded from the throughput)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        results = study.run_study(preset=args.preset, output_dir=args.output_dir, max_steps=args.max_steps,
                                  seed=args.seed, architectures=args.architectures)
    except ValueError as error:  # e.g. an unknown architecture name
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1 if study.failed(results) else 0


if __name__ == "__main__":
    sys.exit(main())
