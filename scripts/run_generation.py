"""Generation on held-out text: continue passages of a book from a prompt, and report the
reference continuation's perplexity, BLEU and ROUGE of the generated text against it, and
sample outputs.

    python scripts/run_generation.py --model_name_or_path runs/lm \
        --validation_file ../shared/data/books/austen-sense.txt --num_passages 50 \
        --prompt_length 512 --continuation_length 128 --output_dir runs/generation

Decoding follows transformers' generate() arguments (--do_sample, --temperature, --top_k,
--top_p, --num_beams; greedy by default). Writes eval_results.json / all_results.json (the
scores, the settings and the metric implementation) and generations.jsonl (prompt, reference,
generated text per passage) in --output_dir. Needs a causal LM (a decoder checkpoint, or
--model_type with is_decoder). The logic lives in `longctx/experiments/generation_eval.py`.
"""

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

try:
    import longctx  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import AutoModelForCausalLM, HfArgumentParser, set_seed

from longctx.experiments.generation_eval import TextSimilarity, passages, reference_scores
from longctx.experiments.run_common import (
    ModelArguments,
    OutputArguments,
    build_model,
    encode_whole_text,
    load_tokenizer,
    new_run_id,
    prepare_output_dir,
    run_info,
    write_json,
    write_run_info,
)


@dataclass
class GenerationArguments:
    validation_file: str = field(metadata={"help": "The held-out text (.txt), read whole."})
    output_dir: str = field(metadata={"help": "Where the results and generations go."})
    num_passages: int = field(default=20, metadata={
        "help": "Passages spread evenly over the text."})
    prompt_length: int = field(default=256, metadata={"help": "Prompt tokens per passage."})
    continuation_length: int = field(default=64, metadata={
        "help": "Reference (and generated) tokens per passage."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={"help": "With --do_sample."})
    top_k: int = field(default=50, metadata={"help": "With --do_sample."})
    top_p: float = field(default=1.0, metadata={"help": "With --do_sample."})
    num_beams: int = field(default=1, metadata={"help": "Beam search width."})
    num_samples_shown: int = field(default=3, metadata={"help": "Passages printed at the end."})
    seed: int = field(default=42, metadata={"help": "For sampling."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto."})

    def __post_init__(self):
        if Path(self.validation_file).suffix != ".txt":
            raise ValueError(f"--validation_file {self.validation_file}: give a .txt file (read "
                             "whole)")


def generate(model, tokenizer, items, args) -> list[list[int]]:
    device = next(model.parameters()).device
    options = dict(max_new_tokens=args.continuation_length, min_new_tokens=args.continuation_length,
                   do_sample=args.do_sample, num_beams=args.num_beams,
                   pad_token_id=tokenizer.pad_token_id)
    if args.do_sample:
        options.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    outputs = []
    for passage in items:  # one at a time: every prompt has the same length, no padding needed
        prompt = torch.tensor([passage.prompt], device=device)
        generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), **options)
        outputs.append(generated[0, prompt.shape[1]:].tolist())
    return outputs


def main(argv=None):
    parser = HfArgumentParser((ModelArguments, GenerationArguments, OutputArguments))
    model_args, args, output_args = parser.parse_args_into_dataclasses(argv)
    prepare_output_dir(args.output_dir, output_args.overwrite_output_dir)
    set_seed(args.seed)
    tokenizer = load_tokenizer(model_args)
    model = build_model(model_args, AutoModelForCausalLM, tokenizer,
                        **({"is_decoder": True} if model_args.model_type else {}))
    device = (("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
              else args.device)
    model.to(device).eval()
    text = Path(args.validation_file).read_text(encoding="utf-8")
    ids = encode_whole_text(tokenizer, text)
    items = passages(ids, args.num_passages, args.prompt_length, args.continuation_length)
    generated = generate(model, tokenizer, items, args)
    decode = lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True)  # noqa: E731
    predictions, references = [decode(g) for g in generated], [decode(p.reference) for p in items]
    similarity = TextSimilarity()
    results = {**reference_scores(model, items), **similarity(predictions, references),
               "passages": len(items), "metric_implementation": similarity.implementation,
               "settings": asdict(args)}
    run_id = new_run_id()  # in the results and in run_info.json: the report matches them
    write_outputs(Path(args.output_dir), {**results, "run_id": run_id}, items, predictions,
                  references, decode)
    write_run_info(args.output_dir, {**run_info(
        "generation", model, asdict(args),
        {"generated_tokens_per_passage": args.continuation_length}), "run_id": run_id})
    print(json.dumps({k: v for k, v in results.items() if k != "settings"}, indent=1))
    for passage, prediction, reference in (
            list(zip(items, predictions, references))[:args.num_samples_shown]):
        print(f"\n--- prompt (...{decode(passage.prompt)[-200:]!r})\n    reference: {reference!r}\n"
              f"    generated: {prediction!r}")


def write_outputs(output_dir: Path, results, items, predictions, references, decode):
    output_dir.mkdir(parents=True, exist_ok=True)
    scores = {(k if k == "run_id" else f"eval_{k}"): v for k, v in results.items()}
    for name in ("eval_results.json", "all_results.json"):
        write_json(output_dir / name, scores, indent=2, ensure_ascii=False, sort_keys=False)
    with open(output_dir / "generations.jsonl", "w", encoding="utf-8") as f:
        for passage, prediction, reference in zip(items, predictions, references):
            f.write(json.dumps({"start_token": passage.start, "prompt": decode(passage.prompt),
                                "reference": reference, "generated": prediction},
                               ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
