"""longctx models inside the stock Hugging Face ecosystem: pipelines, `Trainer`, `datasets`,
gradient checkpointing and `generate()`, on tiny models and the data shipped in
`longctx/experiments/samples/` (no network, no `../shared`).

Each check compares against an independent route to the same answer (a direct forward pass,
a hand-written decoding, a known planted answer, a reloaded checkpoint), never against numbers
taken from the code under test.
"""

import importlib.resources
import json
import math

import pytest
import torch
from datasets import Dataset, load_dataset
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    pipeline,
)

import longctx

SAMPLES = importlib.resources.files("longctx.experiments") / "samples"
VOCAB = 261
BYTE_OFFSET = 5  # byte b has id 5 + b
MASK_ID, EOS_ID, PAD_ID = 4, 2, 0
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_config(**overrides):
    return AutoConfig.for_model("longctx-transformer", **{**TINY, **overrides})


def tiny_model(auto_class, seed=0, **overrides):
    torch.manual_seed(seed)
    return auto_class.from_config(tiny_config(**overrides)).eval()


def tokenizer():
    """A fresh tokenizer per use: pipelines change `padding_side` of the tokenizer they get."""
    return longctx.byte_tokenizer()


def byte_id(char: str) -> int:
    (byte,) = char.encode("utf-8")
    return BYTE_OFFSET + byte


def read_jsonl(name):
    with (SAMPLES / name).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def byte_chunks(text: str, length: int) -> list[list[int]]:
    ids = tokenizer()(text, add_special_tokens=False)["input_ids"]
    return [ids[i:i + length] for i in range(0, len(ids) - length + 1, length)]


def training_args(tmp_path, **kwargs):
    return TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, seed=0,
                             disable_tqdm=True, dataloader_num_workers=0, **kwargs)


# --------------------------------------------------------------------------- shipped samples
def test_shipped_samples_are_complete_and_well_formed():
    for split, rows_per_label in (("train", 200), ("test", 100)):
        rows = read_jsonl(f"imdb_{split}.jsonl")
        assert all(set(row) == {"text", "label"} and row["text"].strip() for row in rows)
        assert sorted(row["label"] for row in rows) == [0] * rows_per_label + [1] * rows_per_label
    train_texts = {row["text"] for row in read_jsonl("imdb_train.jsonl")}
    assert not train_texts & {row["text"] for row in read_jsonl("imdb_test.jsonl")}

    book_train = (SAMPLES / "book_train.txt").read_text(encoding="utf-8")
    book_valid = (SAMPLES / "book_valid.txt").read_text(encoding="utf-8")
    assert 50_000 < len(book_train) <= 60_000 and 10_000 < len(book_valid) <= 15_000
    for book in (book_train, book_valid):
        assert "gutenberg" not in book.lower()
    assert book_train[:2000] not in book_valid

    squad = json.loads((SAMPLES / "squad_sample.json").read_text(encoding="utf-8"))
    assert squad["version"] == "1.1" and len(squad["data"]) == 3
    for article in squad["data"]:
        for paragraph in article["paragraphs"]:
            assert paragraph["qas"]
            for qa in paragraph["qas"]:
                for answer in qa["answers"]:
                    start = answer["answer_start"]
                    assert paragraph["context"][start:start + len(answer["text"])] == answer["text"]

    total = sum(entry.stat().st_size for entry in SAMPLES.iterdir() if entry.is_file())
    assert total < 600 * 1024


# --------------------------------------------------------------------------- pipelines
@pytest.mark.parametrize("is_decoder", [False, True], ids=["encoder", "decoder"])
def test_text_classification_pipeline(is_decoder):
    id2label = {0: "negative", 1: "neutral", 2: "positive"}
    model = tiny_model(AutoModelForSequenceClassification, is_decoder=is_decoder, num_labels=3,
                       id2label=id2label, label2id={v: k for k, v in id2label.items()})
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer())
    texts = ["A wonderful film.", "Terrible, boring, far too long and I left before the end.",
             "Çа ira — naïve but fun 😀", "ok"]
    results = classifier(texts, top_k=None, batch_size=2)  # batches of unequal lengths: padding

    assert len(results) == len(texts)
    tok = tokenizer()
    for text, result in zip(texts, results):
        assert sorted(entry["label"] for entry in result) == sorted(id2label.values())
        scores = [entry["score"] for entry in result]
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)
        assert scores == sorted(scores, reverse=True)
        with torch.no_grad():  # the same text alone, unpadded, straight through the model
            probs = model(**tok(text, return_tensors="pt")).logits.softmax(-1)[0]
        for entry in result:
            label_id = model.config.label2id[entry["label"]]
            assert entry["score"] == pytest.approx(probs[label_id].item(), abs=1e-5)


def test_fill_mask_pipeline_matches_direct_forward():
    model = tiny_model(AutoModelForMaskedLM)
    with torch.no_grad():  # favour lower-case letters so the candidates are printable ASCII
        letters = [byte_id(c) for c in "abcdefghijklmnopqrstuvwxyz"]
        model.lm_head.decoder.bias[letters] += 5.0
    tok = tokenizer()
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer())
    texts = ["Hello w<mask>rld, how are you?", "Zürich is a c<mask>ty in Switzerland."]
    top_k = 5
    # "<mask>" in text is text unless asked otherwise (the tokenizer's split_special_tokens)
    results = fill(texts, top_k=top_k, tokenizer_kwargs={"split_special_tokens": False})

    for text, result in zip(texts, results):
        encoded = tok(text, return_tensors="pt", split_special_tokens=False)
        mask_positions = (encoded["input_ids"][0] == MASK_ID).nonzero().flatten().tolist()
        assert len(mask_positions) == 1
        with torch.no_grad():
            probs = model(**encoded).logits[0, mask_positions[0]].softmax(-1)
        expected = probs.topk(top_k)
        assert [entry["token"] for entry in result] == expected.indices.tolist()
        assert [entry["score"] for entry in result] == pytest.approx(expected.values.tolist(), abs=1e-6)
        for entry in result:
            assert entry["token"] in letters
            letter = chr(entry["token"] - BYTE_OFFSET)
            assert entry["token_str"] == letter
            assert entry["sequence"] == text.replace("<mask>", letter)


def test_text_generation_pipeline_equals_generate_decoded_by_hand():
    model = tiny_model(AutoModelForCausalLM, is_decoder=True)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer())
    tok = tokenizer()
    for prompt in ["Once upon a time", "Über den Wolken, "]:
        out = generator(prompt, max_new_tokens=24, do_sample=False, add_special_tokens=False)
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
        greedy = model.generate(**ids, max_new_tokens=24, do_sample=False)
        new_tokens = greedy[0, ids["input_ids"].shape[1]:]
        assert len(new_tokens) > 0
        by_hand = prompt + tok.decode(new_tokens, skip_special_tokens=True)
        assert out[0]["generated_text"] == by_hand
        continuation = generator(prompt, max_new_tokens=24, do_sample=False, add_special_tokens=False,
                                 return_full_text=False)
        assert continuation[0]["generated_text"] == by_hand[len(prompt):]


def test_text_generation_pipeline_default_call_does_not_end_the_prompt():
    """`pipeline("text-generation")` tokenizes with the tokenizer's defaults; a causal LM must
    then see the prompt still open, not a prompt closed by the end-of-sequence token."""
    model = tiny_model(AutoModelForCausalLM, is_decoder=True)
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"].clone()),
                                    with_kwargs=True)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer())
    generator("Once upon a time", max_new_tokens=4, do_sample=False)
    prompt_seen_by_model = seen[0][0].tolist()
    assert EOS_ID not in prompt_seen_by_model, (
        f"the model was asked to continue {tokenizer().decode(prompt_seen_by_model)!r}")


# --------------------------------------------------------------------------- extractive QA
def planted_span_qa_model(start_char: str, end_char: str):
    """A QA model whose start logit peaks on the last byte of `start_char` and whose end logit
    peaks on the last byte of `end_char`, whatever surrounds them: the blocks are made the
    identity (zero attention and feed-forward outputs), positions are zeroed, so each hidden
    state is the final LayerNorm of the token's own embedding, and the QA head scores it by
    its dot product with that of the planted token (maximal for the token itself)."""
    model = tiny_model(AutoModelForQuestionAnswering)
    backbone = model.model
    with torch.no_grad():
        backbone.embeddings.position_embeddings.weight.zero_()
        for layer in backbone.layers:
            for linear in (layer.attention.output, layer.feed_forward.dense_out):
                linear.weight.zero_()
                linear.bias.zero_()
        targets = torch.tensor([[BYTE_OFFSET + start_char.encode()[-1], BYTE_OFFSET + end_char.encode()[-1]]])
        model.qa_outputs.weight.copy_(backbone(targets).last_hidden_state[0])
        model.qa_outputs.bias.zero_()
    return model


def test_question_answering_pipeline_offsets_non_ascii_and_doc_stride():
    """transformers 5 removed this pipeline task; `import longctx` restores it."""
    qa = pipeline("question-answering", model=planted_span_qa_model("«", "»"), tokenizer=tokenizer())
    # «» also occur in the question: only context tokens may be chosen.
    question = "Où «se trouve» la conférence ?"
    short_context = "Die Konferenz fand in «Zürich» statt, nicht in Genève — ça va ?"
    filler = ("The committee met again and again, café after café, to discuss the schedule; "
              "nobody agreed on anything. ")
    long_context = filler * 12 + "At last they chose «Zürich» for the meeting. " + filler * 4
    assert len(long_context.encode()) > qa.model.config.max_position_embeddings  # needs windows

    for context, max_seq_len, doc_stride in ((short_context, 384, 128), (long_context, 256, 64)):
        result = qa(question=question, context=context, max_seq_len=max_seq_len, doc_stride=doc_stride,
                    max_answer_len=15)
        assert result["answer"] == context[result["start"]:result["end"]] == "«Zürich»"
        assert result["start"] == context.index("«Zürich»")


def test_question_answering_pipeline_random_model_answers_are_context_spans():
    """With an untrained model the span is arbitrary, but it must be whole characters of the
    context (never the question), also when byte tokens split multi-byte characters."""
    qa = pipeline("question-answering", model=tiny_model(AutoModelForQuestionAnswering, seed=3),
                  tokenizer=tokenizer())
    squad = json.loads((SAMPLES / "squad_sample.json").read_text(encoding="utf-8"))
    paragraph = squad["data"][1]["paragraphs"][0]  # Warsaw: Polish diacritics in the context
    assert any(ord(c) > 127 for c in paragraph["context"])
    for item in paragraph["qas"][:3]:
        result = qa(question=item["question"], context=paragraph["context"], max_seq_len=256,
                    doc_stride=64, max_answer_len=15)
        assert 0 <= result["start"] < result["end"] <= len(paragraph["context"])
        assert result["answer"] == paragraph["context"][result["start"]:result["end"]]
        assert len(result["answer"].encode()) <= 15


# --------------------------------------------------------------------------- Trainer
def test_trainer_language_model_on_book_sample(tmp_path):
    length = 64
    train = Dataset.from_dict({"input_ids": byte_chunks((SAMPLES / "book_train.txt").read_text(encoding="utf-8"), length)})
    valid = Dataset.from_dict({"input_ids": byte_chunks((SAMPLES / "book_valid.txt").read_text(encoding="utf-8"), length)[:96]})
    train = train.map(lambda row: {"labels": row["input_ids"]})
    valid = valid.map(lambda row: {"labels": row["input_ids"]})
    model = tiny_model(AutoModelForCausalLM, is_decoder=True).train()
    args = training_args(tmp_path, max_steps=80, per_device_train_batch_size=16, per_device_eval_batch_size=48,
                         learning_rate=3e-3, warmup_steps=5, weight_decay=0.0, logging_steps=20,
                         save_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=valid)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert abs(before - math.log(VOCAB)) < 0.3  # untrained: about uniform over the vocabulary
    assert after < before - 1.0, (before, after)
    assert after < math.log(VOCAB) - 1.0, (before, after)


def test_trainer_sequence_classifier_checkpoint_reloads(tmp_path):
    dataset = load_dataset("json", data_files={"train": str(SAMPLES / "imdb_train.jsonl")},
                           cache_dir=str(tmp_path / "datasets_cache"))["train"]
    assert len(dataset) == 400
    tok = tokenizer()
    dataset = dataset.map(lambda batch: tok(batch["text"], truncation=True, max_length=128),
                          batched=True, remove_columns=["text"])
    id2label = {0: "neg", 1: "pos"}
    model = tiny_model(AutoModelForSequenceClassification, num_labels=2, id2label=id2label,
                       label2id={"neg": 0, "pos": 1}).train()
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    steps = 12
    args = training_args(tmp_path / "run", max_steps=steps, per_device_train_batch_size=16,
                         learning_rate=1e-3, save_strategy="steps", save_steps=steps, logging_steps=4)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tok))
    result = trainer.train()
    assert result.global_step == steps and math.isfinite(result.training_loss)
    assert any(not torch.equal(initial[name], p) for name, p in model.named_parameters())

    checkpoint = tmp_path / "run" / f"checkpoint-{steps}"
    reloaded = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    assert reloaded.config.id2label == id2label
    texts = [row["text"] for row in read_jsonl("imdb_test.jsonl")[:6]]
    batch = tok(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")
    trained = trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, trained(**batch).logits)


# --------------------------------------------------------------------------- gradient checkpointing
# --------------------------------------------------------------------------- generate()
@pytest.fixture(scope="module")
def generator_model():
    # A larger initialisation spreads the logits so greedy choices are never near-ties.
    return tiny_model(AutoModelForCausalLM, seed=1, is_decoder=True, initializer_range=0.2)


def greedy(model, batch, use_cache, max_new_tokens=20):
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=use_cache,
                         return_dict_in_generate=True, output_scores=True)
    return out.sequences[:, batch["input_ids"].shape[1]:], torch.stack(out.scores, 1)


PROMPTS = ["The quick brown fox", "Zürich, «Grüezi»!", "a", "Once upon a time, in a land far away,"]


def test_generate_same_tokens_with_and_without_cache(generator_model):
    tok = tokenizer()
    tok.padding_side = "left"
    batch = tok(PROMPTS, add_special_tokens=False, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # really left padded
    assert (batch["attention_mask"][:, -1] == 1).all()
    for inputs in [tok(PROMPTS[0], add_special_tokens=False, return_tensors="pt"), batch]:
        cached, cached_scores = greedy(generator_model, inputs, use_cache=True)
        uncached, uncached_scores = greedy(generator_model, inputs, use_cache=False)
        assert torch.equal(cached, uncached)
        torch.testing.assert_close(cached_scores, uncached_scores, rtol=1e-4, atol=1e-4)


def test_generate_left_padded_batch_equals_each_prompt_alone(generator_model):
    tok = tokenizer()
    tok.padding_side = "left"
    batch = tok(PROMPTS, add_special_tokens=False, padding=True, return_tensors="pt")
    batched, batched_scores = greedy(generator_model, batch, use_cache=True)
    for row, prompt in enumerate(PROMPTS):
        alone, alone_scores = greedy(generator_model, tok(prompt, add_special_tokens=False, return_tensors="pt"),
                                     use_cache=True)
        alone = alone[0]
        assert torch.equal(batched[row, :len(alone)], alone), prompt
        # A prompt that stopped early at </s> is padded in the batch.
        assert (batched[row, len(alone):] == PAD_ID).all(), prompt
        torch.testing.assert_close(batched_scores[row, :len(alone)], alone_scores[0], rtol=1e-4, atol=1e-4)
