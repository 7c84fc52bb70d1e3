"""The Challenge 2020 metric against hand-worked cases and a literal transcription of the official scorer."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ecgmodel.data.labels import EQUIVALENT_CLASSES, NORMAL_CLASS, aux_path, scored_codes
from ecgmodel.metrics.challenge2020 import ChallengeScorer, challenge_score, official_weights

# The reference transcription reads the embedded copy of the official weights.csv; that the copy is byte-identical
# to the official file is checked against ../shared by test_embedded_tables_are_the_official_ones.
OFFICIAL_WEIGHTS = aux_path("weights.csv")

CODES = scored_codes()
AF, NSR, RBBB, CRBBB, PVC, VPB = "164889003", "426783006", "59118001", "713427006", "427172004", "17338001"


# --- literal transcription of evaluate_12ECG_score.py (physionetchallenges/evaluation-2020, BSD-2-Clause) ---
# Kept loop for loop (file parsing replaced by in-memory rows) so that the vectorised implementation is checked
# against the official algorithm text, not against itself.
def _ref_is_number(x):
    try:
        float(x)
        return True
    except ValueError:
        return False


def _ref_replace_equivalent_classes(classes, equivalent_classes):
    for j, x in enumerate(classes):
        for multiple_classes in equivalent_classes:
            if x in multiple_classes:
                classes[j] = multiple_classes[0]
    return classes


def _ref_load_table(table_file):
    table = list()
    with open(table_file) as f:
        for line in f:
            arrs = [arr.strip() for arr in line.split(",")]
            table.append(arrs)
    num_rows = len(table) - 1
    num_cols = min(set(len(table[i]) - 1 for i in range(num_rows)))
    rows = [table[0][j + 1] for j in range(num_rows)]
    cols = [table[i + 1][0] for i in range(num_cols)]
    values = np.zeros((num_rows, num_cols), dtype=np.float64)
    for i in range(num_rows):
        for j in range(num_cols):
            value = table[i + 1][j + 1]
            values[i, j] = float(value) if _ref_is_number(value) else float("nan")
    return rows, cols, values


def _ref_load_weights(weight_file, equivalent_classes):
    rows, cols, values = _ref_load_table(weight_file)
    assert rows == cols
    rows = _ref_replace_equivalent_classes(rows, equivalent_classes)
    for j, x in enumerate(rows):
        for k, y in enumerate(rows[j + 1:]):
            if x == y:
                assert np.all(values[j, :] == values[j + 1 + k, :])
                assert np.all(values[:, j] == values[:, j + 1 + k])
    classes = [x for j, x in enumerate(rows) if x not in rows[:j]]
    indices = [rows.index(x) for x in classes]
    weights = values[np.ix_(indices, indices)]
    return classes, weights


def _ref_load_labels(label_rows, classes, equivalent_classes):
    num_recordings = len(label_rows)
    tmp_labels = [_ref_replace_equivalent_classes(list(dxs), equivalent_classes) for dxs in label_rows]
    labels = np.zeros((num_recordings, len(classes)), dtype=bool)
    for i in range(num_recordings):
        dxs = tmp_labels[i]
        for j, x in enumerate(classes):
            if x in dxs:
                labels[i, j] = 1
    return labels


def _ref_load_outputs(output_rows, classes, equivalent_classes):
    # output_rows: per record (codes, binary values) as in the output file's first two lines
    num_recordings = len(output_rows)
    tmp_labels = [_ref_replace_equivalent_classes(list(codes), equivalent_classes) for codes, _ in output_rows]
    tmp_binary = [list(values) for _, values in output_rows]
    binary_outputs = np.zeros((num_recordings, len(classes)), dtype=bool)
    for i in range(num_recordings):
        dxs = tmp_labels[i]
        for j, x in enumerate(classes):
            indices = [k for k, y in enumerate(dxs) if x == y]
            if indices:
                binary_outputs[i, j] = np.any([tmp_binary[i][k] for k in indices])
    return binary_outputs


def _ref_compute_modified_confusion_matrix(labels, outputs):
    num_recordings, num_classes = np.shape(labels)
    A = np.zeros((num_classes, num_classes))
    for i in range(num_recordings):
        normalization = float(max(np.sum(np.any((labels[i, :], outputs[i, :]), axis=0)), 1))
        for j in range(num_classes):
            if labels[i, j]:
                for k in range(num_classes):
                    if outputs[i, k]:
                        A[j, k] += 1.0 / normalization
    return A


def _ref_compute_challenge_metric(weights, labels, outputs, classes, normal_class):
    num_recordings, num_classes = np.shape(labels)
    normal_index = classes.index(normal_class)
    A = _ref_compute_modified_confusion_matrix(labels, outputs)
    observed_score = np.nansum(weights * A)
    correct_outputs = labels
    A = _ref_compute_modified_confusion_matrix(labels, correct_outputs)
    correct_score = np.nansum(weights * A)
    inactive_outputs = np.zeros((num_recordings, num_classes), dtype=bool)
    inactive_outputs[:, normal_index] = 1
    A = _ref_compute_modified_confusion_matrix(labels, inactive_outputs)
    inactive_score = np.nansum(weights * A)
    if correct_score != inactive_score:
        normalized_score = float(observed_score - inactive_score) / float(correct_score - inactive_score)
    else:
        normalized_score = float("nan")
    return normalized_score


def reference_score(labels: np.ndarray, outputs: np.ndarray, classes: list[str]) -> float:
    equivalent = [list(g) for g in EQUIVALENT_CLASSES]
    ref_classes, weights = _ref_load_weights(OFFICIAL_WEIGHTS, equivalent)
    label_rows = [[c for c, v in zip(classes, row, strict=True) if v] for row in labels]
    output_rows = [(list(classes), [int(v) for v in row]) for row in outputs]
    lab = _ref_load_labels(label_rows, ref_classes, equivalent)
    out = _ref_load_outputs(output_rows, ref_classes, equivalent)
    return _ref_compute_challenge_metric(weights, lab, out, ref_classes, NORMAL_CLASS)


# ------------------------------------------------------------------------------------------------------------
def one_hot(rows: list[list[str]], classes: list[str] = CODES) -> np.ndarray:
    out = np.zeros((len(rows), len(classes)), dtype=bool)
    for i, codes in enumerate(rows):
        for c in codes:
            out[i, classes.index(c)] = True
    return out


def test_embedded_tables_are_the_official_ones(shared):
    for name in ("weights.csv", "dx_mapping_scored.csv", "dx_mapping_unscored.csv"):
        ours = hashlib.sha256(aux_path(name).read_bytes()).hexdigest()
        theirs = hashlib.sha256((shared / "challenge-2020-scoring" / name).read_bytes()).hexdigest()
        assert ours == theirs, name
    assert len(CODES) == 27 and CODES[0] == "270492004" and CODES[-1] == VPB


def test_reward_matrix_properties():
    classes, w = official_weights()
    assert len(classes) == 24 and w.shape == (24, 24)
    assert NORMAL_CLASS in classes
    for a, b in EQUIVALENT_CLASSES:  # representatives kept, partners folded in
        assert a in classes and b not in classes
    np.testing.assert_array_equal(np.diag(w), 1.0)
    np.testing.assert_array_equal(w, w.T)
    assert (w >= 0).all() and (w <= 1).all()
    # full-table property: equivalent codes carry identical rows (the official loader asserts it too)
    _, _, raw = _ref_load_table(OFFICIAL_WEIGHTS)
    header = _ref_load_table(OFFICIAL_WEIGHTS)[0]
    for a, b in EQUIVALENT_CLASSES:
        np.testing.assert_array_equal(raw[header.index(a)], raw[header.index(b)])


def test_perfect_is_one_and_inactive_is_zero():
    labels = one_hot([[AF], [RBBB, PVC], [NSR], ["164934002", "59931005"]])
    assert challenge_score(labels, labels, CODES) == pytest.approx(1.0)
    inactive = one_hot([[NSR]] * 4)
    assert challenge_score(labels, inactive, CODES) == pytest.approx(0.0)


def test_empty_predictions_hand_worked():
    # One AF record. observed = 0 (no outputs); correct = W[AF,AF] = 1;
    # inactive predicts NSR: normalisation |{AF, NSR}| = 2 -> 0.5 * W[AF,NSR] = 0.5 * 0.25 = 0.125.
    labels = one_hot([[AF]])
    empty = np.zeros_like(labels)
    assert challenge_score(labels, empty, CODES) == pytest.approx((0 - 0.125) / (1 - 0.125))
    assert challenge_score(labels, empty, CODES) == pytest.approx(reference_score(labels, empty, CODES))


def test_equivalent_pairs_score_as_one_class():
    labels = one_hot([[RBBB], [VPB], ["63593006"]])
    outputs = one_hot([[CRBBB], [PVC], ["284470004"]])
    assert challenge_score(labels, outputs, CODES) == pytest.approx(1.0)
    # predicting both codes of a pair is one positive output, not two
    both = one_hot([[CRBBB, RBBB], [PVC, VPB], ["284470004", "63593006"]])
    assert challenge_score(labels, both, CODES) == pytest.approx(1.0)


def test_partial_credit_hand_worked():
    # Record 1: label AF, output AF+AFL -> normalisation 2: A[AF,AF] = A[AF,AFL] = 0.5 -> 0.5*1 + 0.5*0.5 = 0.75
    # Record 2: label NSR, output NSR -> 1.   observed = 1.75; correct = 2;
    # inactive: rec1 0.5 * W[AF,NSR] = 0.125; rec2 1 -> 1.125.  score = (1.75-1.125)/(2-1.125) = 0.714285...
    labels = one_hot([[AF], [NSR]])
    outputs = one_hot([[AF, "164890007"], [NSR]])
    assert challenge_score(labels, outputs, CODES) == pytest.approx(0.625 / 0.875)


def test_column_order_and_unscored_codes_do_not_matter():
    rng = np.random.default_rng(3)
    labels = rng.random((40, 27)) < 0.15
    outputs = rng.random((40, 27)) < 0.2
    base = challenge_score(labels, outputs, CODES)
    perm = rng.permutation(27)
    assert challenge_score(labels[:, perm], outputs[:, perm], [CODES[i] for i in perm]) == pytest.approx(base)
    extra = np.ones((40, 1), dtype=bool)  # an unscored code (2nd degree AV block) is ignored
    assert challenge_score(
        np.hstack([labels, extra]), np.hstack([outputs, ~extra]), [*CODES, "195042002"]
    ) == pytest.approx(base)


@pytest.mark.parametrize("seed", range(8))
def test_matches_literal_official_transcription(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    p_label, p_out = rng.uniform(0.02, 0.3, size=2)
    labels = rng.random((n, 27)) < p_label
    outputs = rng.random((n, 27)) < p_out
    if seed % 3 == 0:  # some records with no scored label / no output at all
        labels[: n // 3] = False
        outputs[n // 2:] = False
    ours = challenge_score(labels, outputs, CODES)
    assert ours == pytest.approx(reference_score(labels, outputs, CODES), abs=1e-12)
    assert ChallengeScorer(labels, CODES)(outputs) == pytest.approx(ours, abs=1e-12)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="differ in shape"):
        challenge_score(np.zeros((2, 27), bool), np.zeros((3, 27), bool), CODES)
    with pytest.raises(ValueError, match="27"):
        challenge_score(np.zeros((2, 26), bool), np.zeros((2, 26), bool), CODES)


def test_threshold_tuning_improves_the_validation_score():
    from ecgmodel.downstream.thresholds import tune_thresholds

    rng = np.random.default_rng(0)
    n = 300
    labels = rng.random((n, 27)) < np.linspace(0.02, 0.25, 27)
    # informative but miscalibrated probabilities: positives ~0.3, negatives ~0.15 (all below 0.5)
    probs = np.clip(np.where(labels, 0.3, 0.15) + rng.normal(0, 0.06, labels.shape), 0, 1)
    default = challenge_score(labels, probs >= 0.5, CODES)
    thresholds, tuned = tune_thresholds(labels, probs, CODES, grid=21, passes=2)
    assert tuned == pytest.approx(challenge_score(labels, probs >= thresholds, CODES))
    assert tuned > default + 0.3
    assert ((thresholds > 0.15) & (thresholds < 0.3)).mean() > 0.5  # found the gap between the two modes
    # never worse than the start, even when the start is already good
    start = np.full(27, 0.225)
    _, again = tune_thresholds(labels, probs, CODES, grid=5, passes=1, init=start)
    assert again >= challenge_score(labels, probs >= start, CODES)
