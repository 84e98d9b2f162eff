"""Metrics: classification (against hand-worked confusion matrices) and SQuAD v1.1 (against
hand-worked cases of the official evaluation script's normalisation and F1)."""

import pytest

from longctx.experiments.metrics import (
    Metrics,
    SquadMetric,
    binary_classification_metrics,
    exact_match_score,
    f1_score,
    normalize_answer,
    squad_v1_scores,
)


# --------------------------------------------------------------------------- classification metrics


def test_metrics_hand_worked_confusion_matrix():
    #              TP TP TP FN FN FP TN TN TN TN
    predictions = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]
    references = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    # TP=3, FN=2, FP=1, TN=4: accuracy 7/10, precision 3/4, recall 3/5, F1 = 2*3 / (2*3 + 1 + 2) = 2/3
    metrics = binary_classification_metrics(predictions, references)
    assert metrics == pytest.approx({"accuracy": 0.7, "precision": 0.75, "recall": 0.6, "f1": 2 / 3})
    # F1 is the harmonic mean of precision and recall
    assert metrics["f1"] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))


def test_metrics_no_positive_predictions_gives_zero_precision():
    metrics = binary_classification_metrics([0, 0, 0, 0], [1, 0, 1, 0])
    assert metrics == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_metrics_no_positive_labels_gives_zero_recall():
    metrics = binary_classification_metrics([1, 0, 0], [0, 0, 0])
    assert metrics == pytest.approx({"accuracy": 2 / 3, "precision": 0.0, "recall": 0.0, "f1": 0.0})


def test_metrics_all_negative_and_perfect_cases():
    assert binary_classification_metrics([0, 0], [0, 0]) == {"accuracy": 1.0, "precision": 0.0, "recall": 0.0,
                                                              "f1": 0.0}
    assert binary_classification_metrics([1, 0, 1], [1, 0, 1]) == {"accuracy": 1.0, "precision": 1.0,
                                                                    "recall": 1.0, "f1": 1.0}
    assert binary_classification_metrics([1, 1], [0, 0])["accuracy"] == 0.0


def test_metrics_accept_numpy_and_reject_bad_input():
    import numpy as np
    assert binary_classification_metrics(np.array([1, 0]), np.array([1, 1]))["recall"] == 0.5
    with pytest.raises(ValueError):
        binary_classification_metrics([1, 0], [1])
    with pytest.raises(ValueError):
        binary_classification_metrics([2, 0], [1, 0])


# --------------------------------------------------------------------------- SQuAD v1.1


@pytest.mark.parametrize("text,normalized", [
    ("The Cat", "cat"),                          # lower case, article dropped
    ("  Paris,   France. ", "paris france"),     # punctuation dropped, whitespace collapsed
    ("an apple a day", "apple day"),             # every article, as a whole word
    ("theater", "theater"),                      # "the" inside a word stays
    ("don't", "dont"),                           # punctuation removed inside words, no space left
    ("A-team", "ateam"),                         # hyphen removed first, so "a" is no longer a word
    ("the the", ""),                             # nothing but articles
    ("1,000", "1000"),
    ("Ünïcode Straße", "ünïcode straße"),        # non-ASCII letters kept, lower-cased
])
def test_normalization_follows_the_official_script(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_and_f1_hand_worked():
    assert exact_match_score("The Eiffel Tower!", "eiffel tower")
    assert not exact_match_score("Eiffel", "Eiffel Tower")
    # prediction tokens [eiffel, tower, paris], truth [eiffel, tower]: 2 shared,
    # precision 2/3, recall 1, F1 = 2 * (2/3) / (2/3 + 1) = 0.8
    assert f1_score("the Eiffel tower, Paris", "Eiffel Tower") == pytest.approx(0.8)
    # repeated tokens count with multiplicity: [x, x, y] vs [x, y, y] share one x and one y: 2
    assert f1_score("x x y", "x y y") == pytest.approx(2 / 3)
    assert f1_score("nothing", "else") == 0.0
    assert f1_score("the", "a") == 0.0  # both empty after normalisation: no shared token


def test_squad_scores_take_the_best_truth_and_count_unanswered_questions():
    references = [
        {"id": "q1", "answers": {"text": ["Denver Broncos", "the Broncos"], "answer_start": [0, 4]}},
        {"id": "q2", "answers": {"text": ["Santa Clara, California"], "answer_start": [0]}},
        {"id": "q3", "answers": {"text": ["1967"], "answer_start": [0]}},  # not predicted: scores 0
    ]
    predictions = [{"id": "q1", "prediction_text": "Broncos"},       # EM with "the Broncos"
                   {"id": "q2", "prediction_text": "Santa Clara"}]   # F1 2*(1*2/3)/(1+2/3) = 0.8
    scores = squad_v1_scores(predictions, references)
    assert scores["exact_match"] == pytest.approx(100 * 1 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 0.8) / 3)


def test_squad_scores_reject_malformed_input():
    with pytest.raises(ValueError, match="prediction_text"):
        squad_v1_scores([{"id": "q"}], [{"id": "q", "answers": {"text": ["a"], "answer_start": [0]}}])
    with pytest.raises(ValueError, match="no answer"):
        squad_v1_scores([], [{"id": "q", "answers": {"text": [], "answer_start": []}}])


def test_metric_objects_give_the_local_values_and_say_which_implementation_they_use():
    """Offline (CI, this machine) evaluate.load needs the Hub: the local implementation answers,
    and says so. Where the modules load, the same call goes through them."""
    squad = SquadMetric()
    references = [{"id": "q", "answers": {"text": ["Denver Broncos"], "answer_start": [0]}}]
    scores = squad([{"id": "q", "prediction_text": "the Denver Broncos"}], references)
    assert scores == pytest.approx({"exact_match": 100.0, "f1": 100.0})
    assert ("local" in squad.implementation) == (squad.module is None)
    classification = Metrics()
    assert classification([1, 0], [1, 1])["recall"] == pytest.approx(0.5)
    assert ("local" in classification.implementation) == (classification.modules is None)


def test_confusion_matrix_counts_true_labels_down_predictions_across():
    from longctx.experiments.metrics import confusion_matrix

    predictions = [1, 0, 1, 1, 0, 0, 1]
    references = [1, 0, 0, 1, 1, 0, 1]
    # by hand: true 0 -> predicted 0 at indices 1 and 5, predicted 1 at 2; true 1 -> predicted 0 at
    # 4, predicted 1 at 0, 3, 6
    assert confusion_matrix(predictions, references) == [[2, 1], [1, 3]]
    assert confusion_matrix([2, 0], [1, 2], num_labels=3) == [[0, 0, 0], [0, 0, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_matrix([0, 2], [0, 1])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        confusion_matrix([0, 1], [0])
