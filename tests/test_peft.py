"""LoRA (peft) on every architecture with the target modules the README's "Fine-tuning with peft
(LoRA)" table gives. The table is read from the README, so it cannot drift from the code."""

import re
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import AutoConfig, AutoModelForSequenceClassification

import longctx

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Fine-tuning with peft (LoRA)"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            num_labels=2)
# Configs that hold every kind of layer an architecture has (Reformer: an LSH and a local layer).
EVERY_LAYER_KIND = {
    "longctx-longformer": dict(attention_window=8),
    "longctx-linformer": dict(projection_dim=8),
    "longctx-reformer": dict(attn_layers=["local", "lsh"], lsh_attn_chunk_length=8,
                             local_attn_chunk_length=8, hash_seed=5),
}


def documented_targets() -> dict[str, set[str]]:
    """model type -> the module names in its row of the README's table (every `name` in the row)."""
    section = README.read_text(encoding="utf-8").split(SECTION, 1)[1].split("\n## ", 1)[0]
    table = {}
    for row in section.splitlines():
        if row.startswith("| `"):
            model_type, *cells = row.strip("|").split("|")
            table[model_type.strip(" `")] = set(re.findall(r"`([^`]+)`", "|".join(cells)))
    return table


def classifier(model_type: str):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **TINY, **EVERY_LAYER_KIND.get(model_type, {}))
    return AutoModelForSequenceClassification.from_config(config)


def layer_linear_names(model) -> set[str]:
    """The last path part of every nn.Linear in the layers (the heads are not LoRA's)."""
    return {name.rsplit(".", 1)[-1] for name, module in model.model.layers.named_modules()
            if isinstance(module, torch.nn.Linear)}


def test_the_readme_table_names_exactly_the_linear_layers_of_every_architecture():
    table = documented_targets()
    assert set(table) == set(longctx.ARCHITECTURES)
    for model_type, names in table.items():
        assert names == layer_linear_names(classifier(model_type)), model_type


@pytest.mark.parametrize("model_type", list(longctx.ARCHITECTURES))
def test_lora_on_the_documented_modules_trains(model_type):
    targets = sorted(documented_targets()[model_type])
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=targets)
    model = get_peft_model(classifier(model_type), lora)
    wrapped = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
               if isinstance(module, LoraLayer)}
    assert wrapped == set(targets)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name or ".classifier." in name for name in trainable)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}

    ids = torch.randint(5, 261, (2, 24), generator=torch.Generator().manual_seed(1))
    model.train()
    loss = model(input_ids=ids, labels=torch.tensor([0, 1])).loss
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()

    assert torch.isfinite(loss)
    after = dict(model.named_parameters())
    moved = {name for name in before if not torch.equal(after[name], before[name])}
    assert moved <= trainable  # the model's own weights stay frozen
    # Every target's adapters learned, in some layer (B starts at zero; a Longformer classifier's
    # last layer, e.g., feeds only its global token, so its local projections get no gradient).
    learned = {re.search(r"\.(\w+)\.lora_B\.", name).group(1) for name in moved if "lora_B" in name}
    assert learned == set(targets)
