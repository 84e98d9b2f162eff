"""Generation quality on held-out text (`scripts/run_generation.py`): passages cut from a long
text into a prompt and its reference continuation; the model continues each prompt, and we
report the reference's perplexity under the model, BLEU and ROUGE of the generated text against
the reference, and the samples themselves.

Similarity metrics: `evaluate.load("sacrebleu")` and `evaluate.load("rouge")` when they load
(they need the Hub or a cache), else the packages those modules wrap, called the same way
(sacrebleu's corpus BLEU with its default 13a tokenizer; rouge_score's F-measures without
stemming, averaged over passages -- `evaluate`'s rouge with use_aggregator=False, averaged): the
same numbers either way.

This module is a user of the models; modeling files never import it.
"""

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@dataclass(frozen=True)
class Passage:
    start: int  # token index of the prompt's first token in the text
    prompt: list[int]
    reference: list[int]


def passages(ids: list[int], count: int, prompt_length: int,
             continuation_length: int) -> list[Passage]:
    """`count` passages spread evenly over the text, each `prompt_length` tokens of prompt and
    the next `continuation_length` tokens as reference; raises ValueError when the text is too
    short."""
    span = prompt_length + continuation_length
    if min(count, prompt_length, continuation_length) < 1:
        raise ValueError(f"num_passages={count}, prompt_length={prompt_length} and "
                         f"continuation_length={continuation_length} must all be positive")
    if len(ids) < span:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one passage of prompt_length "
                         f"+ continuation_length = {span}; use a longer text or shorter passages")
    last_start = len(ids) - span
    starts = [round(i * last_start / max(count - 1, 1)) for i in range(count)] if count > 1 else [0]
    return [Passage(s, ids[s:s + prompt_length], ids[s + prompt_length:s + span])
            for s in dict.fromkeys(starts)]


@torch.no_grad()
def reference_scores(model, items: list[Passage]) -> dict:
    """Loss and perplexity of the reference continuations given their prompts (teacher forcing)."""
    model.eval()
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for passage in items:
        ids = torch.tensor([passage.prompt + passage.reference], device=device)
        logits = model(input_ids=ids).logits[0, len(passage.prompt) - 1:-1].float()
        targets = ids[0, len(passage.prompt):]
        nll += float(F.cross_entropy(logits, targets, reduction="sum"))
        count += len(passage.reference)
    loss = nll / count
    return {"reference_loss": loss, "reference_perplexity": math.exp(loss),
            "reference_tokens": count}


class TextSimilarity:
    """BLEU and ROUGE F-measures of predictions against one reference each (module doc)."""

    def __init__(self):
        self.unavailable_reason = None
        try:
            import evaluate

            self.bleu, self.rouge = evaluate.load("sacrebleu"), evaluate.load("rouge")
            self.implementation = 'evaluate (evaluate.load("sacrebleu"), evaluate.load("rouge"))'
        except Exception as error:  # no Hub access and no cached module
            self.unavailable_reason = f"{type(error).__name__}: {error}"
            self.bleu = self.rouge = None
            self.implementation = ("local (the sacrebleu and rouge_score packages, as evaluate "
                                   "calls them; evaluate.load failed: "
                                   f"{type(error).__name__})")

    def __call__(self, predictions: list[str], references: list[str]) -> dict:
        if len(predictions) != len(references) or not predictions:
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references: "
                             "give one each")
        if self.bleu is not None:
            bleu = self.bleu.compute(predictions=predictions,
                                     references=[[r] for r in references])["score"]
            rouge = self.rouge.compute(predictions=predictions, references=references,
                                       rouge_types=list(ROUGE_TYPES), use_aggregator=False)
            return {"bleu": float(bleu),
                    **{name: sum(rouge[name]) / len(predictions) for name in ROUGE_TYPES}}
        return {"bleu": local_bleu(predictions, references), **local_rouge(predictions, references)}


def local_bleu(predictions: list[str], references: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


def local_rouge(predictions: list[str], references: list[str]) -> dict:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    scores = [scorer.score(reference, prediction)
              for prediction, reference in zip(predictions, references)]
    return {name: sum(score[name].fmeasure for score in scores) / len(scores)
            for name in ROUGE_TYPES}
