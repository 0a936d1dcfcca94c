"""Spread and confidence intervals of results over seeds.

- `describe`: mean, sample std and the 95% Student-t interval of the mean of
  one metric over seeds.
- `per_task`: each continual metric of `mgtil_jax.criteria.metrics` written as a mean
  over tasks of a per-task value, so that methods can be compared task by
  task.
- `detectable_difference`: the smallest true paired difference a design of
  n seeds detects with the given power (a paired t-test's minimum
  detectable effect, from the spread of the per-seed differences).
- `paired_bootstrap`: the mean paired difference of two methods (same
  seeds, same tasks) with a percentile bootstrap interval that resamples
  seeds and tasks independently (a two-way bootstrap: both the training
  randomness and the choice of tasks vary).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sp_stats


# The fewest seeds an interval is printed from (docs/metrics.md).
MIN_SEEDS = 3


def describe(values, confidence: float = 0.95,
             min_seeds: int = MIN_SEEDS) -> dict:
  """Mean, sample std (ddof 1) and the t-interval of the mean of `values`
  (NaN/None dropped). With one value std is None; with fewer than
  `min_seeds` values the interval is None."""
  x = np.asarray([v for v in values
                  if v is not None and not math.isnan(v)], np.float64)
  if x.size == 0:
    return {'mean': None, 'std': None, 'ci': None, 'n': 0}
  mean = float(x.mean())
  if x.size < 2:
    return {'mean': mean, 'std': None, 'ci': None, 'n': 1}
  std = float(x.std(ddof=1))
  if x.size < min_seeds:
    return {'mean': mean, 'std': std, 'ci': None, 'n': int(x.size)}
  half = float(sp_stats.t.ppf(0.5 + confidence / 2, x.size - 1) * std /
               math.sqrt(x.size))
  return {'mean': mean, 'std': std, 'ci': [mean - half, mean + half],
          'n': int(x.size)}


def per_task(acc_matrix) -> dict:
  """Per-task terms of the continual metrics (metrics.continual_metrics is
  the mean of each): float[T] arrays, NaN where a task has no term (task 1
  for transfer, task T for bwt). A single row (joint training) has only
  `last` and `acc`."""
  a = np.asarray(acc_matrix, np.float64)
  rows, t = a.shape
  out = {'last': a[-1].copy(), 'acc': a[-1].copy()}
  if rows != t:
    return out
  nan = np.full(t, np.nan)
  transfer, bwt = nan.copy(), nan.copy()
  for j in range(1, t):
    transfer[j] = a[:j, j].mean()
  for j in range(t - 1):
    bwt[j] = a[-1, j] - a[j, j]
  out.update(transfer=transfer, avg=a.mean(axis=0), bwt=bwt)
  return out


def paired_bootstrap(a, b, num_samples: int = 2000, confidence: float = 0.95,
                     seed: int = 0, min_seeds: int = MIN_SEEDS) -> dict:
  """Mean of a - b and its bootstrap interval; a, b: float[seeds, tasks]
  of one per-task metric (NaN = no term, skipped). Seeds and tasks are
  resampled with replacement, independently; deterministic in `seed`.
  With fewer than `min_seeds` seeds the interval is None: resampling two
  seeds' tasks measures the tasks, not the method (docs/metrics.md,
  "Seeds and intervals")."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f'paired_bootstrap: expected two equal [seeds, tasks] '
                     f'arrays, got {a.shape} and {b.shape}')
  d = a - b
  keep = np.isfinite(d).any(axis=0)
  d = d[:, keep]
  if d.size == 0 or not np.isfinite(d).all():
    return {'mean': None, 'ci': None, 'n_seeds': int(a.shape[0]),
            'n_tasks': int(d.shape[1])}
  s, t = d.shape
  if s < min_seeds:
    return {'mean': float(d.mean()), 'ci': None, 'n_seeds': s, 'n_tasks': t}
  rng = np.random.default_rng(seed)
  rows = rng.integers(0, s, (num_samples, s))
  cols = rng.integers(0, t, (num_samples, t))
  means = d[rows[:, :, None], cols[:, None, :]].mean(axis=(1, 2))
  lo, hi = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2])
  return {'mean': float(d.mean()), 'ci': [float(lo), float(hi)],
          'n_seeds': s, 'n_tasks': t}


def detectable_difference(seed_diffs, power: float = 0.8,
                          alpha: float = 0.05) -> float | None:
  """The smallest true mean difference that a two-sided paired t-test at
  level `alpha` over these seeds finds with probability `power`:
  (t[1 - alpha/2, n-1] + t[power, n-1]) * sd / sqrt(n), sd the sample std
  of the per-seed differences (the standard approximation of the paired
  design's minimum detectable effect; docs/metrics.md). None below
  MIN_SEEDS seeds."""
  d = np.asarray([v for v in seed_diffs
                  if v is not None and not math.isnan(v)], np.float64)
  if d.size < MIN_SEEDS:
    return None
  n = d.size
  t = sp_stats.t.ppf(1 - alpha / 2, n - 1) + sp_stats.t.ppf(power, n - 1)
  return float(t * d.std(ddof=1) / math.sqrt(n))
