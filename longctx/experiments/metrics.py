"""Metrics of the study, from `evaluate` modules when they load (they need the Hub or a cache),
else local implementations that give the same values:

- classification: accuracy, and precision / recall / F1 of label 1 (scikit-learn's defaults);
- SQuAD v1.1: exact match and F1, the official evaluation script's definitions -- answers are
  lower-cased, stripped of punctuation and of the articles a/an/the, and whitespace-normalised;
  F1 is over the bag of remaining tokens; each prediction takes its best ground truth; a
  question with no prediction scores 0; both are percentages over all questions.

Each metric object says which implementation it uses (`implementation`), so reports can too.
"""

import re
import string
from collections import Counter

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1")


def binary_classification_metrics(predictions, references) -> dict:
    """Accuracy, and precision / recall / F1 of label 1 -- the values of scikit-learn's (and so
    `evaluate`'s) defaults, with 0.0 where a ratio has nothing to divide by (no positive
    predictions: precision 0; no positive labels: recall 0; neither: F1 0)."""
    predictions, references = [int(p) for p in predictions], [int(r) for r in references]
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not set(predictions) | set(references) <= {0, 1}:
        raise ValueError("binary metrics need labels 0 and 1")
    pairs = list(zip(predictions, references))
    tp = sum(p == 1 and r == 1 for p, r in pairs)
    fp = sum(p == 1 and r == 0 for p, r in pairs)
    fn = sum(p == 0 and r == 1 for p, r in pairs)
    correct = sum(p == r for p, r in pairs)
    return {
        "accuracy": correct / len(pairs) if pairs else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
    }


def confusion_matrix(predictions, references, num_labels: int = 2) -> list[list[int]]:
    """counts[true label][predicted label]: row 0 holds the negatives (true negatives, false
    positives), row 1 the positives (false negatives, true positives)."""
    predictions, references = [int(p) for p in predictions], [int(r) for r in references]
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    outside = sorted({*predictions, *references} - set(range(num_labels)))
    if outside:
        raise ValueError(f"labels {outside} are outside 0..{num_labels - 1}; pass num_labels")
    counts = [[0] * num_labels for _ in range(num_labels)]
    for predicted, true in zip(predictions, references):
        counts[true][predicted] += 1
    return counts


# --------------------------------------------------------------------------- SQuAD v1.1

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official v1.1 normalisation, in its order: lower case, drop punctuation characters,
    drop the whole words a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
    predicted, truth = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    shared = sum((Counter(predicted) & Counter(truth)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(truth)
    return 2 * precision * recall / (precision + recall)


def squad_v1_scores(predictions, references) -> dict:
    """`evaluate`'s "squad" interface: predictions [{"id", "prediction_text"}], references
    [{"id", "answers": {"text": [...], "answer_start": [...]}}] -> {"exact_match", "f1"} in
    percent over all references (a reference without a prediction scores 0, as officially)."""
    predicted = {}
    for entry in predictions:
        _require_keys(entry, ("id", "prediction_text"), "prediction")
        predicted[entry["id"]] = entry["prediction_text"]
    exact = f1 = 0.0
    for entry in references:
        _require_keys(entry, ("id", "answers"), "reference")
        truths = list(entry["answers"]["text"])
        if not truths:
            raise ValueError(f"reference {entry['id']!r} has no answer text: SQuAD v1.1 questions "
                             "all have one")
        if entry["id"] not in predicted:
            continue
        exact += max(exact_match_score(predicted[entry["id"]], truth) for truth in truths)
        f1 += max(f1_score(predicted[entry["id"]], truth) for truth in truths)
    total = len(references)
    if total == 0:
        raise ValueError("no references to score")
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}


def _require_keys(entry, keys, what):
    missing = [key for key in keys if key not in entry]
    if missing:
        raise ValueError(f"a {what} lacks {missing}; each needs {list(keys)}")


# --------------------------------------------------------------------------- loading


def _load_evaluate_modules(names, check):
    """{name: module} from evaluate.load, and a check computation each; raises when unavailable."""
    import evaluate

    modules = {name: evaluate.load(name) for name in names}
    for module in modules.values():  # e.g. precision needs scikit-learn at compute time
        check(module)
    return modules


class Metrics:
    """Classification metrics: `evaluate` modules when they load, else the local ones."""

    NAMES = CLASSIFICATION_METRICS

    def __init__(self):
        self.unavailable_reason = None
        try:
            self.modules = _load_evaluate_modules(
                self.NAMES, lambda m: m.compute(predictions=[0, 1], references=[0, 1]))
            self.implementation = ("evaluate ("
                                   + ", ".join(f'evaluate.load("{n}")' for n in self.NAMES) + ")")
        except Exception as error:  # no Hub access, no cached module, or no scikit-learn
            self.unavailable_reason = f"{type(error).__name__}: {error}"
            self.modules = None
            self.implementation = ("local (longctx.experiments.metrics."
                                   "binary_classification_metrics; evaluate.load failed: "
                                   f"{type(error).__name__})")

    def __call__(self, predictions, references) -> dict:
        if self.modules is None:
            return binary_classification_metrics(predictions, references)
        return {name: float(module.compute(predictions=predictions, references=references)[name])
                for name, module in self.modules.items()}


class SquadMetric:
    """SQuAD v1.1 exact match and F1: `evaluate.load("squad")` when it loads, else the local
    implementation of the official script (`squad_v1_scores`)."""

    def __init__(self):
        self.unavailable_reason = None
        sample = dict(predictions=[{"id": "0", "prediction_text": "a"}],
                      references=[{"id": "0", "answers": {"text": ["a"], "answer_start": [0]}}])
        try:
            self.module = _load_evaluate_modules(["squad"], lambda m: m.compute(**sample))["squad"]
            self.implementation = 'evaluate (evaluate.load("squad"))'
        except Exception as error:
            self.unavailable_reason = f"{type(error).__name__}: {error}"
            self.module = None
            self.implementation = ("local (longctx.experiments.metrics.squad_v1_scores; "
                                   f"evaluate.load failed: {type(error).__name__})")

    def __call__(self, predictions, references) -> dict:
        if self.module is None:
            return squad_v1_scores(predictions, references)
        scores = self.module.compute(predictions=predictions, references=references)
        return {"exact_match": float(scores["exact_match"]), "f1": float(scores["f1"])}
