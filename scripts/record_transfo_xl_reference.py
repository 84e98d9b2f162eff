"""Record the transformers 4.35.2 Transformer-XL reference that tests/test_convert_transfo_xl.py
checks.

transformers 5 has no TransfoXL (4.35.2 is the last release whose TransfoXL runs), so the
reference lives in its own virtual environment, which this script creates and re-runs itself in:

    python scripts/record_transfo_xl_reference.py          # venv in /tmp/venv-tf4352
    python scripts/record_transfo_xl_reference.py --venv DIR \
        --output tests/fixtures/transfo_xl_4352

Inside it, a `TransfoXLLMHeadModel` with random weights (adaptive input and softmax with
`div_val > 1`, `same_length=True`, `clamp_len`, `mem_len > 0`, heads of a width other than
d_model / n_head) is saved twice: `save_pretrained(safe_serialization=True)` into OUTPUT
(config.json + model.safetensors) and `save_pretrained(safe_serialization=False)` into OUTPUT/bin
(config.json + pytorch_model.bin, for the `weights_only` loading path). Then three consecutive
segments of a batch are run carrying `mems`, and OUTPUT/reference.safetensors records, per segment:

- input_ids (segments, batch, length): the labels too (transformers shifts them inside);
- losses (segments, batch, length - 1): the `losses` output as returned. Careful: 4.35.2's
  adaptive softmax writes them grouped by cluster (the head's tokens first, then each tail's),
  not in token order, unless `crit.keep_order` is set;
- losses_in_order: the same losses with `crit.keep_order = True` (token order);
- log_probs (segments, batch, length, vocab): `prediction_scores` without labels.

The first segment gets transformers' default memory: `mem_len` zero vectors per layer (not an
empty memory). OUTPUT/pre_lnorm holds a second model (no .bin) covering the other branches:
pre-LN, one pair of position biases for all layers, one projected embedding table (div_val=1), an
untied softmax, no clamping. OUTPUT/sequence_classification holds a
`TransfoXLForSequenceClassification` (3 labels, pad_token_id set) and, for a right-padded batch
without an attention mask (transformers' TransfoXL takes none) from the default zero memory:
input_ids, labels, logits and the loss. Everything is < 500 KB.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

PINS = ["torch==2.13.0", "transformers==4.35.2", "numpy<2"]
REFERENCE_VERSION = "4.35.2"
ROOT = Path(__file__).resolve().parents[1]

CONFIG = dict(vocab_size=100, cutoffs=[20, 50], div_val=2, d_model=32, d_embed=32, n_head=4,
              d_head=6, d_inner=48, n_layer=3, mem_len=6, clamp_len=5, same_length=True,
              proj_share_all_but_first=True, pre_lnorm=False, untie_r=True, dropout=0.1,
              dropatt=0.0, eos_token_id=0)
# The other branches: pre-LN (whose memory is normalised too), one pair of position biases for all
# layers, a single projected table (div_val=1, d_embed != d_model), an untied softmax, no clamping.
PRE_LNORM_CONFIG = dict(vocab_size=100, cutoffs=[30, 70], div_val=1, d_model=32, d_embed=24,
                        n_head=2, d_head=10, d_inner=40, n_layer=2, mem_len=4, clamp_len=0,
                        same_length=False, proj_share_all_but_first=True, pre_lnorm=True,
                        untie_r=False, tie_word_embeddings=False, dropout=0.1, dropatt=0.0,
                        eos_token_id=0)
VARIANTS = {"": CONFIG, "pre_lnorm": PRE_LNORM_CONFIG}  # subfolder -> config
BATCH, LENGTH, SEGMENTS, SEED = 2, 5, 3, 0
# The classifier: CONFIG's backbone with labels and a pad id (its `score` needs d_embed == d_model).
CLASSIFIER_CONFIG = dict(CONFIG, num_labels=3, pad_token_id=5)
CLASSIFIER_LENGTHS = (7, 4, 5)  # real tokens per row, right-padded to the longest


def ensure_venv(venv: Path) -> Path:
    """The venv's python, created with the pinned packages if it does not exist yet."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PINS], check=True)
    return python


def running_reference() -> bool:
    try:
        import transformers
    except ImportError:
        return False
    return transformers.__version__ == REFERENCE_VERSION


def redraw(model, torch):
    """transformers' init leaves biases at 0 and LayerNorm at 1 (a swapped tensor would go
    unseen) and its small weights make attention almost uniform: redraw every parameter,
    in place so that tied ones stay tied."""
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "layer_norm.weight" in name:
                parameter.copy_(1 + 0.1 * noise)
            else:
                parameter.copy_(0.3 * noise)


def record(output: Path):
    for subfolder, config in VARIANTS.items():
        record_variant(output / subfolder if subfolder else output, config, with_bin=not subfolder)
    record_classifier(output / "sequence_classification", CLASSIFIER_CONFIG)


def record_classifier(output: Path, config: dict):
    import torch
    from safetensors.torch import save_file
    from transformers import TransfoXLConfig, TransfoXLForSequenceClassification

    torch.manual_seed(SEED)
    model = TransfoXLForSequenceClassification(TransfoXLConfig(**config)).eval()
    redraw(model, torch)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)

    generator = torch.Generator().manual_seed(2)
    # Real tokens avoid the pad id (transformers finds the last real token by the first pad).
    ids = torch.randint(config["pad_token_id"] + 1, config["vocab_size"], (len(CLASSIFIER_LENGTHS),
                        max(CLASSIFIER_LENGTHS)), generator=generator)
    for row, length in enumerate(CLASSIFIER_LENGTHS):
        ids[row, length:] = config["pad_token_id"]
    labels = torch.randint(0, config["num_labels"], (len(CLASSIFIER_LENGTHS),), generator=generator)
    with torch.no_grad():
        out = model(ids, labels=labels)
    save_file({"input_ids": ids, "labels": labels, "logits": out.logits,
               "loss": out.loss.reshape(1)}, output / "reference.safetensors")
    print(f"recorded {output}: loss {out.loss:.4f}")


def record_variant(output: Path, config: dict, with_bin: bool):
    import torch
    from safetensors.torch import save_file
    from transformers import TransfoXLConfig, TransfoXLLMHeadModel

    torch.manual_seed(SEED)
    model = TransfoXLLMHeadModel(TransfoXLConfig(**config)).eval()
    redraw(model, torch)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    if with_bin:
        model.save_pretrained(output / "bin", safe_serialization=False)

    ids = torch.randint(0, config["vocab_size"], (SEGMENTS, BATCH, LENGTH),
                        generator=torch.Generator().manual_seed(1))
    ids[0, 0, :3] = torch.tensor([99, 60, 30])  # every cluster in the first segment
    losses, in_order, log_probs, mems = [], [], [], None
    with torch.no_grad():
        for segment in ids:
            log_probs.append(model(segment, mems=mems).prediction_scores)
            model.crit.keep_order = True
            in_order.append(model(segment, mems=mems, labels=segment.clone()).losses)
            model.crit.keep_order = False
            out = model(segment, mems=mems, labels=segment.clone())
            losses.append(out.losses)
            mems = out.mems
    save_file({"input_ids": ids, "losses": torch.stack(losses),
               "losses_in_order": torch.stack(in_order), "log_probs": torch.stack(log_probs)},
              output / "reference.safetensors")
    print(f"recorded {output}: losses {torch.stack(in_order).mean():.4f} over {SEGMENTS} segments")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default="/tmp/venv-tf4352",
                        help="virtual environment with transformers 4.35.2")
    parser.add_argument("--output", default=str(ROOT / "tests" / "fixtures" / "transfo_xl_4352"))
    args = parser.parse_args()
    if running_reference():
        record(Path(args.output))
        return
    python = ensure_venv(Path(args.venv))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    subprocess.run([str(python), __file__, "--venv", args.venv, "--output", args.output],
                   check=True, env=env)


if __name__ == "__main__":
    main()
