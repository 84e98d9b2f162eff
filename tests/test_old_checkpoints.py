"""Checkpoints saved by an earlier longctx (commit da8778e, before the package was reorganised)
load with today's code and compute what they computed then: same state-dict keys, same logits.
The fixtures and the script that made them: tests/fixtures/longctx_da8778e/."""

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import longctx  # noqa: F401  (registers the model types)

FIXTURES = Path(__file__).parent / "fixtures" / "longctx_da8778e"
MODEL_TYPES = sorted(folder.name for folder in FIXTURES.iterdir() if folder.is_dir())


def test_every_architecture_has_an_old_checkpoint():
    assert MODEL_TYPES == sorted(longctx.ARCHITECTURES)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_old_checkpoint_loads_and_computes_the_same(model_type, transformers_log):
    folder = FIXTURES / model_type
    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    auto_name = next(name for name, cls in longctx.ARCHITECTURES[model_type].auto_classes().items()
                     if cls.__name__ == architecture)
    model = getattr(transformers, auto_name).from_pretrained(folder).eval()
    # transformers reports weights it had to initialise or could not place (wording varies)
    reports = ("MISSING", "UNEXPECTED", "newly initialized", "not used", "not initialized")
    assert not [m for m in transformers_log if any(word in m for word in reports)]
    expected = load_file(folder / "expected.safetensors")
    with torch.no_grad():
        output = model(expected["input_ids"])
    got = output.logits if getattr(output, "logits", None) is not None else output.start_logits
    torch.testing.assert_close(got, expected["output"], rtol=1e-5, atol=1e-5)
