"""REPORT.md from the results under one or more folders (default runs/ and results/): the run_*.py
scripts' run folders (run_info.json + all_results.json) and scripts/benchmark.py's JSON.

    python scripts/report.py                        # runs/ results/ -> REPORT.md
    python scripts/report.py runs/imdb runs/squad --output REPORT.md

The logic lives in `longctx/experiments/report.py`.
"""

import argparse
import sys
from pathlib import Path

try:
    import longctx  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from longctx.experiments.report import build_report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="*", default=["runs", "results"],
                        help="folders to search (default runs results)")
    parser.add_argument("--output", default="REPORT.md")
    args = parser.parse_args(argv)
    roots = [root for root in args.roots if Path(root).exists()]
    try:
        build_report(roots or args.roots, Path(args.output))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
