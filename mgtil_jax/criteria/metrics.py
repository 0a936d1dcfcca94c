"""Continual-learning metrics (docs/metrics.md) and per-task classification
metrics.

The accuracy matrix `A` is float[T, T]: row t is evaluated after training task
t, column j is task j (0-based here, 1-based in the paper's formulas). The
zero-shot row, measured before any training, is reported beside the others
but enters none of them.
"""

from __future__ import annotations

import numpy as np


def _check_matrix(acc_matrix) -> np.ndarray:
  a = np.asarray(acc_matrix, np.float64)
  if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
    raise ValueError(f'acc_matrix: expected a non-empty square [T, T] array, '
                     f'got shape {a.shape}')
  return a


def continual_metrics(acc_matrix, zero_shot=None) -> dict:
  """Transfer, Avg, Last, BWT and Forgetting of an accuracy matrix.

  - Transfer: mean over tasks j >= 2 of the mean over t < j of A[t, j]
    (accuracy on tasks not yet trained; task 1 has no entry). NaN for T = 1.
  - Avg: mean over j of the mean over all t of A[t, j].
  - Last: mean over j of A[T, j].
  - BWT: mean over j < T of A[T, j] - A[j, j]. NaN for T = 1.
  - Forgetting: mean over j < T of max_{j <= t < T} A[t, j] - A[T, j]
    (Chaudhry et al. 2018, maximum taken after task j was learned).
  `zero_shot` (float[T]) is passed through as `zero_shot_mean`.
  """
  a = _check_matrix(acc_matrix)
  t = a.shape[0]
  transfer = [a[:j, j].mean() for j in range(1, t)]
  out = {
      'transfer': float(np.mean(transfer)) if transfer else float('nan'),
      'avg': float(a.mean(axis=0).mean()),
      'last': float(a[-1].mean()),
      'bwt': (float(np.mean([a[-1, j] - a[j, j] for j in range(t - 1)]))
              if t > 1 else float('nan')),
      'forgetting': (float(np.mean([a[j:t - 1, j].max() - a[-1, j]
                                    for j in range(t - 1)]))
                     if t > 1 else float('nan')),
  }
  if zero_shot is not None:
    zs = np.asarray(zero_shot, np.float64)
    if zs.shape != (t,):
      raise ValueError(f'zero_shot: expected shape ({t},), got {zs.shape}')
    out['zero_shot_mean'] = float(zs.mean())
  return out


def accuracy(labels, predictions) -> float:
  labels = np.asarray(labels)
  predictions = np.asarray(predictions)
  if labels.shape != predictions.shape or labels.size == 0:
    raise ValueError(f'labels {labels.shape} and predictions '
                     f'{predictions.shape} must be equal, non-empty shapes')
  return float((labels == predictions).mean())


def _rank_average(x: np.ndarray) -> np.ndarray:
  """1-based ranks with ties given their average rank."""
  order = np.argsort(x, kind='mergesort')
  sorted_x = x[order]
  ranks = np.empty(len(x), np.float64)
  start = 0
  while start < len(x):
    stop = start
    while stop + 1 < len(x) and sorted_x[stop + 1] == sorted_x[start]:
      stop += 1
    ranks[order[start:stop + 1]] = (start + stop) / 2 + 1
    start = stop + 1
  return ranks


def binary_auc(is_positive, scores) -> float:
  """ROC AUC by the Mann-Whitney statistic (ties count one half)."""
  pos = np.asarray(is_positive, bool)
  n_pos, n_neg = pos.sum(), (~pos).sum()
  if n_pos == 0 or n_neg == 0:
    return float('nan')
  ranks = _rank_average(np.asarray(scores, np.float64))
  return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auc(labels, scores) -> float:
  """Macro one-vs-rest AUC over the classes present in `labels`.

  scores: float[N, C] (probabilities or logits). Classes with no positive or
  no negative example are skipped; NaN if none remain.
  """
  labels = np.asarray(labels)
  scores = np.asarray(scores)
  if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
    raise ValueError(f'scores: expected [N, C] with N = {labels.shape[0]}, '
                     f'got {scores.shape}')
  aucs = [binary_auc(labels == c, scores[:, c]) for c in range(scores.shape[1])]
  aucs = [a for a in aucs if not np.isnan(a)]
  return float(np.mean(aucs)) if aucs else float('nan')
