"""The versions of transformers and torch that setup.cfg declares, for CI and for users.

    python scripts/supported_versions.py --oldest transformers   # prints e.g. 5.19.0
    python scripts/supported_versions.py --check                 # installed ones inside the range?

CI installs the newest release the range admits (the README's install command), runs the tests,
then installs `--oldest` and runs them again: both ends of the declared range are tested.
"""

import argparse
import configparser
import sys
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"
CHECKED = ("transformers", "torch")


def declared_requirements(setup_cfg: Path = SETUP_CFG) -> dict:
    """Package name -> Requirement, from setup.cfg's install_requires."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    lines = parser["options"]["install_requires"].splitlines()
    specs = [line.split("#")[0].strip() for line in lines]
    requirements = [Requirement(spec) for spec in specs if spec]
    return {requirement.name: requirement for requirement in requirements}


def oldest(requirement: Requirement) -> str:
    """The version of the range's `>=` bound: the oldest release it admits and CI tests."""
    lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    if len(lower) != 1:
        raise ValueError(f"setup.cfg declares {requirement}; give it one lower bound (>=X) so that "
                         f"CI can test the oldest version it admits.")
    return lower[0]


def outside_range(requirements: dict) -> list[str]:
    """'name installed (declared)' for each checked package installed outside its range."""
    wrong = []
    for name in CHECKED:
        installed = version(name).split("+")[0]  # torch's local tag (+cpu) is not part of the range
        if not requirements[name].specifier.contains(installed, prereleases=True):
            wrong.append(f"{name} {installed} (setup.cfg: {requirements[name]})")
    return wrong


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--oldest", metavar="PACKAGE", help="print the oldest version declared")
    parser.add_argument("--check", action="store_true",
                        help="print the installed versions; exit 1 if one is outside the range")
    args = parser.parse_args(argv)
    requirements = declared_requirements()
    if args.oldest:
        print(oldest(requirements[args.oldest]))
    if args.check:
        print(", ".join(f"{name} {version(name)}" for name in CHECKED))
        wrong = outside_range(requirements)
        if wrong:
            sys.exit(f"installed outside the declared range: {'; '.join(wrong)}")


if __name__ == "__main__":
    main()
