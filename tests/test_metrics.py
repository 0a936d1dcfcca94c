"""Tests for mgtil_jax.metrics against hand arithmetic and a brute-force AUC."""

import math

import numpy as np
import pytest

from mgtil_jax.criteria import metrics

# Row t = evaluated after training task t, column j = task j (0-based).
# A[1][0] > A[0][0] on purpose, so that Forgetting (max over earlier rows)
# differs from -BWT (which uses the diagonal only).
A = [[0.80, 0.30, 0.20],
     [0.85, 0.90, 0.60],
     [0.60, 0.85, 0.95]]


def test_continual_metrics_hand_computed_3x3():
  out = metrics.continual_metrics(A)
  # Transfer: task 2 -> A[0][1] = 0.30; task 3 -> (A[0][2] + A[1][2]) / 2
  #   = (0.20 + 0.60) / 2 = 0.40; mean = (0.30 + 0.40) / 2 = 0.35.
  #   (A flat mean of the 3 upper entries would be 1.1 / 3 = 0.3667.)
  assert out['transfer'] == pytest.approx(0.35)
  # Avg: mean of column means = mean of all 9 entries (equal rows per column)
  #   = (1.30 + 2.35 + 2.40) / 9 = 6.05 / 9 = 0.672222...
  assert out['avg'] == pytest.approx(6.05 / 9)
  # Last: (0.60 + 0.85 + 0.95) / 3 = 2.40 / 3 = 0.80.
  assert out['last'] == pytest.approx(0.80)
  # BWT: ((0.60 - 0.80) + (0.85 - 0.90)) / 2 = (-0.20 - 0.05) / 2 = -0.125.
  assert out['bwt'] == pytest.approx(-0.125)
  # Forgetting: task 1: max(0.80, 0.85) - 0.60 = 0.25; task 2: 0.90 - 0.85
  #   = 0.05; mean = 0.15.
  assert out['forgetting'] == pytest.approx(0.15)
  assert 'zero_shot_mean' not in out


def test_avg_is_mean_of_column_means():
  # Hand arithmetic on a matrix whose columns have different means, so Avg
  # is not confused with e.g. the mean of the diagonal or of the last row.
  a = [[1.0, 0.0],
       [0.0, 0.5]]
  out = metrics.continual_metrics(a)
  # columns: (1.0 + 0.0) / 2 = 0.5, (0.0 + 0.5) / 2 = 0.25 -> 0.375
  assert out['avg'] == pytest.approx(0.375)
  assert out['last'] == pytest.approx(0.25)   # (0.0 + 0.5) / 2
  assert out['transfer'] == pytest.approx(0.0)  # A[0][1]
  assert out['bwt'] == pytest.approx(-1.0)    # 0.0 - 1.0
  assert out['forgetting'] == pytest.approx(1.0)  # max(1.0) - 0.0


def test_forgetting_window_starts_at_task_and_excludes_last_row():
  # Forgetting of task j takes the max over rows j..T-1 (after j was learned,
  # before the last row), per the docstring.
  a = [[0.50, 0.99, 0.20],
       [0.40, 0.90, 0.30],
       [0.70, 0.60, 0.80]]
  # task 1: max(0.50, 0.40) - 0.70 = -0.20 (the last row's 0.70 is not in
  #   the max, so positive backward transfer gives negative forgetting);
  # task 2: max(0.90) - 0.60 = 0.30 (row 0's 0.99 was before task 2 was
  #   learned, so it is not in the max).
  # mean = (-0.20 + 0.30) / 2 = 0.05.
  assert metrics.continual_metrics(a)['forgetting'] == pytest.approx(0.05)
  # BWT: ((0.70 - 0.50) + (0.60 - 0.90)) / 2 = (0.20 - 0.30) / 2 = -0.05.
  assert metrics.continual_metrics(a)['bwt'] == pytest.approx(-0.05)


def test_single_task():
  out = metrics.continual_metrics([[0.42]])
  assert math.isnan(out['transfer'])
  assert math.isnan(out['bwt'])
  assert out['avg'] == pytest.approx(0.42)
  assert out['last'] == pytest.approx(0.42)


@pytest.mark.parametrize('row', [0, 1, 2])
def test_transfer_ignores_task_1_column(row):
  # Task 1 has no Transfer entry: every A[t][0] is irrelevant to it.
  base = metrics.continual_metrics(A)['transfer']
  changed = np.array(A)
  changed[row, 0] = 0.01
  assert metrics.continual_metrics(changed)['transfer'] == pytest.approx(base)


def test_transfer_ignores_diagonal_and_below():
  base = metrics.continual_metrics(A)['transfer']
  changed = np.array(A)
  changed[np.tril_indices(3)] = 0.123
  assert metrics.continual_metrics(changed)['transfer'] == pytest.approx(base)


def test_transfer_uses_entries_above_diagonal():
  base = metrics.continual_metrics(A)['transfer']
  changed = np.array(A)
  changed[0, 1] = 0.70  # +0.40 on task 2's only entry -> transfer +0.20
  assert metrics.continual_metrics(changed)['transfer'] == pytest.approx(
      base + 0.20)


@pytest.mark.parametrize('bad', [
    [0.1, 0.2, 0.3],                     # 1-D
    [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]],  # not square
    np.zeros((0, 0)),                    # empty
    np.zeros((2, 2, 2)),                 # 3-D
])
def test_bad_shapes_raise(bad):
  with pytest.raises(ValueError, match='acc_matrix'):
    metrics.continual_metrics(bad)


def test_zero_shot_passthrough():
  out = metrics.continual_metrics(A, zero_shot=[0.1, 0.2, 0.6])
  assert out['zero_shot_mean'] == pytest.approx(0.3)  # 0.9 / 3
  # The zero-shot row enters none of the other metrics.
  assert out['transfer'] == pytest.approx(0.35)
  assert out['avg'] == pytest.approx(6.05 / 9)


@pytest.mark.parametrize('zero_shot', [[0.1, 0.2], [[0.1, 0.2, 0.3]]])
def test_zero_shot_shape_checked(zero_shot):
  with pytest.raises(ValueError, match='zero_shot'):
    metrics.continual_metrics(A, zero_shot=zero_shot)


def test_accuracy():
  # 3 of 5 equal, by hand.
  assert metrics.accuracy([0, 1, 2, 2, 1], [0, 1, 1, 2, 0]) == pytest.approx(
      0.6)
  with pytest.raises(ValueError):
    metrics.accuracy([0, 1], [0, 1, 2])
  with pytest.raises(ValueError):
    metrics.accuracy([], [])


# ----------------------------------------------------------------- AUC --


def brute_force_auc(is_positive, scores):
  """Reference: P(score_pos > score_neg) + 0.5 P(equal), by counting every
  positive-negative pair (O(n^2), independent of the library's rank method)."""
  is_positive = np.asarray(is_positive, bool)
  scores = np.asarray(scores, np.float64)
  pos, neg = scores[is_positive], scores[~is_positive]
  if len(pos) == 0 or len(neg) == 0:
    return float('nan')
  total = 0.0
  for p in pos:
    for n in neg:
      total += 1.0 if p > n else 0.5 if p == n else 0.0
  return total / (len(pos) * len(neg))


def test_binary_auc_hand_example():
  # pos scores {0.9, 0.5}, neg scores {0.5, 0.1}: pairs (0.9>0.5) 1,
  # (0.9>0.1) 1, (0.5=0.5) 0.5, (0.5>0.1) 1 -> 3.5 / 4 = 0.875.
  assert metrics.binary_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == (
      pytest.approx(0.875))


@pytest.mark.parametrize('seed', range(5))
def test_binary_auc_matches_brute_force_with_ties(seed):
  rng = np.random.default_rng(seed)
  n = 60
  is_positive = rng.random(n) < 0.4
  scores = rng.integers(0, 6, n) / 5.0  # only 6 distinct values: many ties
  assert metrics.binary_auc(is_positive, scores) == pytest.approx(
      brute_force_auc(is_positive, scores), abs=1e-12)


def test_binary_auc_one_class_is_nan():
  assert math.isnan(metrics.binary_auc([1, 1, 1], [0.1, 0.2, 0.3]))
  assert math.isnan(metrics.binary_auc([0, 0], [0.1, 0.2]))


@pytest.mark.parametrize('seed', range(3))
def test_macro_auc_matches_brute_force_and_skips_absent(seed):
  rng = np.random.default_rng(100 + seed)
  n, c = 50, 5
  labels = rng.choice([0, 1, 3, 4], n)  # class 2 never occurs
  scores = rng.integers(0, 4, (n, c)).astype(np.float64)  # ties
  expected = np.mean([brute_force_auc(labels == k, scores[:, k])
                      for k in (0, 1, 3, 4)])
  assert metrics.macro_auc(labels, scores) == pytest.approx(expected,
                                                            abs=1e-12)


def test_macro_auc_absent_class_does_not_count_as_anything():
  # Class 1 is absent; its scores column is garbage that must not matter.
  labels = np.array([0, 0, 2, 2])
  scores = np.array([[0.9, 0.0, 0.1],
                     [0.8, 5.0, 0.2],
                     [0.1, -3., 0.7],
                     [0.2, 1.0, 0.6]])
  # Class 0: both positives (0.9, 0.8) beat both negatives (0.1, 0.2) -> 1.
  # Class 2: positives (0.7, 0.6) beat negatives (0.1, 0.2) -> 1.
  assert metrics.macro_auc(labels, scores) == pytest.approx(1.0)


def test_macro_auc_nothing_left_is_nan_and_shape_checked():
  # One class only: class 0 has no negatives, class 1 no positives.
  assert math.isnan(metrics.macro_auc([0, 0, 0], np.zeros((3, 2))))
  with pytest.raises(ValueError, match='scores'):
    metrics.macro_auc([0, 1, 0], np.zeros((4, 2)))
  with pytest.raises(ValueError, match='scores'):
    metrics.macro_auc([0, 1, 0], np.zeros(3))
