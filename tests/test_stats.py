"""Tests for mgtil_jax.stats (spread and intervals over seeds)."""

import itertools

import numpy as np
import pytest

from mgtil_jax.criteria import metrics
from mgtil_jax.core import stats


def test_describe_matches_a_hand_computed_t_interval():
  # Reference by hand: x = 1, 2, 3, 4 -> mean 2.5, s = sqrt(5/3) = 1.29099;
  # t_{0.975, 3} = 3.182446 (printed t tables); half = t * s / 2.
  out = stats.describe([1.0, 2.0, 3.0, 4.0])
  half = 3.182446 * np.sqrt(5 / 3) / 2
  assert out['mean'] == pytest.approx(2.5)
  assert out['std'] == pytest.approx(np.sqrt(5 / 3))
  assert out['ci'] == pytest.approx([2.5 - half, 2.5 + half], abs=1e-5)
  assert out['n'] == 4


def test_describe_one_value_and_missing_values():
  assert stats.describe([0.7]) == {'mean': 0.7, 'std': None, 'ci': None,
                                   'n': 1}
  assert stats.describe([None, float('nan')])['mean'] is None
  assert stats.describe([0.5, None, 0.7])['n'] == 2


def test_no_interval_from_fewer_than_three_seeds():
  # Issue 23: a one- or two-seed interval over tasks is not a CI of the
  # method; the mean and the counts stay.
  two = stats.describe([0.5, 0.7])
  assert two['ci'] is None and two['std'] == pytest.approx(np.std([.5, .7],
                                                                 ddof=1))
  a = np.array([[0.6, 0.7, 0.8], [0.5, 0.9, 0.4]])
  out = stats.paired_bootstrap(a, a - 0.1)
  assert out['ci'] is None and out['mean'] == pytest.approx(0.1)
  assert (out['n_seeds'], out['n_tasks']) == (2, 3)
  assert stats.paired_bootstrap(np.vstack([a, a]), a.repeat(2, 0) - .1)['ci']


def test_per_task_terms_average_to_continual_metrics():
  # Reference: metrics.continual_metrics, an independent loop over the
  # definitions (docs/metrics.md: Transfer / Avg / Last / BWT).
  acc = np.random.default_rng(0).uniform(0, 1, (4, 4))
  terms = stats.per_task(acc)
  ref = metrics.continual_metrics(acc)
  for k in ('transfer', 'avg', 'last', 'bwt'):
    assert np.nanmean(terms[k]) == pytest.approx(ref[k])
  assert np.isnan(terms['transfer'][0]) and np.isnan(terms['bwt'][-1])


def test_per_task_single_row_has_only_final_metrics():
  terms = stats.per_task([[0.5, 0.7, 0.9]])
  assert set(terms) == {'last', 'acc'}
  np.testing.assert_allclose(terms['last'], [0.5, 0.7, 0.9])


def test_paired_bootstrap_mean_and_interval():
  rng = np.random.default_rng(1)
  b = rng.uniform(0.4, 0.6, (3, 9))
  a = b + 0.1 + rng.normal(0, 0.01, (3, 9))
  out = stats.paired_bootstrap(a, b)
  assert out['mean'] == pytest.approx((a - b).mean())
  lo, hi = out['ci']
  assert lo < out['mean'] < hi
  assert 0.08 < lo and hi < 0.12
  assert (out['n_seeds'], out['n_tasks']) == (3, 9)
  # Deterministic in its seed.
  assert stats.paired_bootstrap(a, b)['ci'] == out['ci']


def test_paired_bootstrap_interval_matches_exhaustive_resampling():
  # Reference: with 2 seeds x 2 tasks there are only 4 x 4 equally likely
  # two-way resamples; enumerate them all and take the same quantiles.
  d = np.array([[0.0, 1.0], [2.0, 5.0]])
  exact = [d[np.ix_(r, c)].mean()
           for r in itertools.product(range(2), repeat=2)
           for c in itertools.product(range(2), repeat=2)]
  # The interval spans the exhaustive distribution's 2.5..97.5% quantiles,
  # which here are its extremes.
  out = stats.paired_bootstrap(d, np.zeros_like(d), num_samples=20000,
                               min_seeds=2)
  assert out['ci'][0] == pytest.approx(min(exact))
  assert out['ci'][1] == pytest.approx(max(exact))
  assert out['mean'] == pytest.approx(np.mean(exact))


def test_paired_bootstrap_skips_tasks_without_a_term_and_checks_shapes():
  a = np.array([[np.nan, 0.6, 0.7], [np.nan, 0.5, 0.8]])
  out = stats.paired_bootstrap(a, a - 0.1)
  assert out['n_tasks'] == 2 and out['mean'] == pytest.approx(0.1)
  with pytest.raises(ValueError, match='paired_bootstrap'):
    stats.paired_bootstrap(np.zeros((2, 3)), np.zeros((3, 2)))


def test_detectable_difference_has_the_stated_power():
  # Independent check: the exact power of a two-sided paired t-test at
  # effect delta is P(|T| > t_crit) for T ~ noncentral t(n-1,
  # delta * sqrt(n) / sd) (scipy.stats.nct); at the returned effect it
  # must be close to the 80 % asked for.
  from scipy import stats as sp
  d = np.array([0.03, -0.01, 0.05, 0.02, 0.00, 0.04])
  n, sd = d.size, d.std(ddof=1)
  delta = stats.detectable_difference(d)
  crit = sp.t.ppf(0.975, n - 1)
  nc = delta * np.sqrt(n) / sd
  power = sp.nct.sf(crit, n - 1, nc) + sp.nct.cdf(-crit, n - 1, nc)
  assert 0.75 < power < 0.85, power
  # More seeds with the same spread detect a smaller difference.
  assert stats.detectable_difference(np.tile(d, 2)) < delta
  assert stats.detectable_difference(d[:2]) is None
