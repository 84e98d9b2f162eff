"""The declared version range (setup.cfg) and the tool CI reads it with."""

import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import supported_versions  # noqa: E402


def test_installed_transformers_and_torch_are_inside_the_declared_range():
    assert supported_versions.outside_range(supported_versions.declared_requirements()) == []


def test_transformers_range_has_a_tested_floor_and_a_cap():
    specifiers = {spec.operator: spec.version
                  for spec in supported_versions.declared_requirements()["transformers"].specifier}
    assert set(specifiers) == {">=", "<"}, specifiers
    result = subprocess.run([sys.executable, str(SCRIPTS / "supported_versions.py"), "--oldest",
                             "transformers"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == specifiers[">="]


def test_a_version_outside_the_range_is_reported():
    declared = {"transformers": Requirement("transformers<1"), "torch": Requirement("torch>=1")}
    wrong = supported_versions.outside_range(declared)
    assert len(wrong) == 1 and wrong[0].startswith("transformers ")


def test_a_range_without_a_floor_is_refused():
    with pytest.raises(ValueError, match="lower bound"):
        supported_versions.oldest(Requirement("transformers<6"))
