"""push_to_hub uploads what save_pretrained writes: weights, config with the full auto_map,
and the code files. The Hub is unreachable here, so its client is replaced by a recorder."""

import json
import os
import types

import torch
import transformers.utils.hub as hub
from transformers import AutoConfig, AutoModelForSequenceClassification

import longctx


def test_push_to_hub_uploads_weights_config_and_code(monkeypatch):
    uploaded = {}

    def record_upload(self, folder, repo_id, **kwargs):
        uploaded["repo_id"] = repo_id
        uploaded["files"] = sorted(os.listdir(folder))
        with open(os.path.join(folder, "config.json")) as f:
            uploaded["config"] = json.load(f)

    fake_api = types.SimpleNamespace(create_repo=lambda repo_id, **kw: types.SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(hub, "hf_api", lambda: fake_api)
    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda *a, **kw: types.SimpleNamespace(save=lambda path: None))
    monkeypatch.setattr(hub.PushToHubMixin, "_upload_modified_files", record_upload)

    config = AutoConfig.for_model("longctx-transformer", hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).push_to_hub("me/tiny")

    assert uploaded["repo_id"] == "me/tiny"
    assert {"model.safetensors", "config.json", "modeling_transformer.py", "modeling_heads.py",
            "modeling_blocks.py", "attention_dense.py", "configuration_transformer.py",
            "configuration_common.py"} <= set(uploaded["files"])
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in uploaded["files"])  # no pickles
    expected = {name: f"{cls.__module__.rsplit('.', 1)[1]}.{cls.__name__}"
                for name, cls in longctx.ARCHITECTURES["longctx-transformer"].auto_classes().items()}
    expected["AutoConfig"] = "configuration_transformer.LongctxTransformerConfig"
    assert uploaded["config"]["auto_map"] == expected
