"""Tests for mgtil_jax.losses against plain NumPy references.

Losses are called under jax.jit, as the train step calls them (and one
compile is much faster than op-by-op dispatch on CPU)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgtil_jax.criteria import losses


def np_log_softmax(x, axis=-1):
  x = np.asarray(x, np.float64)
  shifted = x - x.max(axis=axis, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def np_classification_loss(logits, labels, smoothing):
  """Reference: mean_b -sum_c y_bc log softmax(z_b)_c with
  y = (1 - a) * onehot + a / C."""
  b, c = logits.shape
  onehot = np.zeros((b, c))
  onehot[np.arange(b), labels] = 1.0
  targets = (1 - smoothing) * onehot + smoothing / c
  return float(-(targets * np_log_softmax(logits)).sum(-1).mean())


def np_clip_loss(logits):
  """Reference: (mean_i -log softmax(rows)_ii + mean_j -log softmax(cols)_jj)
  / 2."""
  logits = np.asarray(logits, np.float64)
  rows = -np.diag(np_log_softmax(logits, axis=1)).mean()
  cols = -np.diag(np_log_softmax(logits, axis=0)).mean()
  return float((rows + cols) / 2)


_clip_loss = jax.jit(losses.clip_contrastive_loss)
_classification_loss = jax.jit(
    lambda logits, labels, a: losses.classification_loss(
        logits, labels, label_smoothing=a), static_argnums=2)


@pytest.mark.parametrize('smoothing', [0.0, 0.2, 0.5])
@pytest.mark.parametrize('seed', range(3))
def test_classification_loss_matches_numpy(smoothing, seed):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 3, (7, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 7)
  got = _classification_loss(jnp.asarray(logits), jnp.asarray(labels),
                              smoothing)
  assert float(got) == pytest.approx(
      np_classification_loss(logits, labels, smoothing), rel=1e-5)


def test_classification_loss_smoothing_hand_case():
  # Uniform logits over C = 4: log softmax = -log 4 for every class, and the
  # targets sum to 1 whatever the smoothing, so the loss is log 4.
  logits = jnp.zeros((3, 4))
  labels = jnp.array([0, 3, 1])
  for a in (0.0, 0.2):
    assert float(_classification_loss(logits, labels, a)) == pytest.approx(
        math.log(4))


def test_classification_loss_smoothing_changes_confident_loss():
  # A confident correct prediction: smoothing must raise the loss (the
  # targets put mass a / C on wrong classes with very negative log-probs).
  logits = jnp.array([[10.0, 0.0, 0.0]])
  labels = jnp.array([0])
  plain = _classification_loss(logits, labels, 0.0)
  smooth = _classification_loss(logits, labels, 0.2)
  assert float(smooth) > float(plain) + 0.5
  assert float(smooth) == pytest.approx(
      np_classification_loss(np.array([[10.0, 0.0, 0.0]]), [0], 0.2), rel=1e-5)


def test_classification_loss_smoothing_is_keyword_only():
  with pytest.raises(TypeError):
    losses.classification_loss(jnp.zeros((1, 2)), jnp.zeros(1, jnp.int32), 0.2)


def test_clip_loss_batch_of_one_is_zero():
  # A 1x1 logit matrix: softmax of one entry is 1 -> -log 1 = 0.
  assert float(_clip_loss(jnp.array([[3.7]]))) == (
      pytest.approx(0.0, abs=1e-7))


@pytest.mark.parametrize('b', [2, 5])
def test_clip_loss_ties_is_log_b(b):
  # All logits equal: every row/column softmax is uniform -> -log(1 / B).
  assert float(_clip_loss(jnp.full((b, b), 1.5))) == (
      pytest.approx(math.log(b), rel=1e-6))


@pytest.mark.parametrize('seed', range(4))
def test_clip_loss_matches_numpy(seed):
  rng = np.random.default_rng(seed)
  # Non-symmetric on purpose: rows and columns give different CE terms.
  logits = rng.normal(0, 4, (6, 6)).astype(np.float32)
  got = _clip_loss(jnp.asarray(logits))
  assert float(got) == pytest.approx(np_clip_loss(logits), rel=1e-5)


def test_clip_loss_uses_both_directions():
  # Column 2 is 9 everywhere, the rest 0. Rows: rows 0 and 1 put ~all mass on
  # column 2 (CE ~ 9 each), row 2 on its diagonal (CE ~ 0) -> mean ~ 6.
  # Columns: every column is constant -> CE = log 3 each. A one-direction
  # implementation would give ~6 or ~1.1 instead of their average.
  logits = np.zeros((3, 3), np.float32)
  logits[:, 2] = 9.0
  rows_only = float(-np.diag(np_log_softmax(logits, axis=1)).mean())
  cols_only = float(-np.diag(np_log_softmax(logits, axis=0)).mean())
  assert cols_only == pytest.approx(math.log(3))
  assert rows_only > 5.0
  got = float(_clip_loss(jnp.asarray(logits)))
  assert got == pytest.approx(np_clip_loss(logits), rel=1e-5)
  assert got == pytest.approx((rows_only + cols_only) / 2, rel=1e-5)


_l2 = jax.jit(losses.l2_to_anchor)


def _tree(rng):
  return {
      'a': rng.normal(size=(3, 4)).astype(np.float32),
      'b': {'c': rng.normal(size=(5,)).astype(np.float32),
            'd': np.float32(rng.normal())},
  }


def test_l2_to_anchor_matches_numpy():
  rng = np.random.default_rng(0)
  params, anchor = _tree(rng), _tree(rng)
  # Reference: sum over every leaf and element of (p - a)^2, in float64.
  expected = sum(
      float(np.sum((np.float64(p) - np.float64(a)) ** 2))
      for p, a in [(params['a'], anchor['a']),
                   (params['b']['c'], anchor['b']['c']),
                   (params['b']['d'], anchor['b']['d'])])
  got = _l2(jax.tree.map(jnp.asarray, params), anchor)
  assert float(got) == pytest.approx(expected, rel=1e-5)


def test_l2_to_anchor_is_zero_at_anchor():
  params = _tree(np.random.default_rng(1))
  assert float(_l2(params, params)) == 0.0


def test_l2_to_anchor_hand_case():
  # (1 - 0)^2 + (2 - 4)^2 + (3 - 3)^2 = 1 + 4 + 0 = 5
  assert float(_l2(
      {'w': jnp.array([1.0, 2.0]), 'b': jnp.array(3.0)},
      {'w': jnp.array([0.0, 4.0]), 'b': jnp.array(3.0)})) == pytest.approx(5.0)


def test_weighted_classification_loss_matches_numpy():
  # Reference: PyTorch's CrossEntropyLoss(weight=w) mean reduction,
  # sum_b w[y_b] CE_b / sum_b w[y_b], computed here in NumPy.
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (9, 3)).astype(np.float32)
  labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2])
  w = np.array([0.5, 1.5, 3.0], np.float32)
  ce = -np_log_softmax(logits)[np.arange(9), labels]
  want = float((w[labels] * ce).sum() / w[labels].sum())
  got = losses.classification_loss(jnp.asarray(logits), jnp.asarray(labels),
                                   class_weights=jnp.asarray(w))
  assert float(got) == pytest.approx(want, rel=1e-5)
  # Equal weights give the plain mean.
  ones = losses.classification_loss(jnp.asarray(logits), jnp.asarray(labels),
                                    class_weights=jnp.ones(3))
  assert float(ones) == pytest.approx(float(ce.mean()), rel=1e-5)


def test_balanced_class_weights_match_inverse_frequency():
  # sklearn's compute_class_weight('balanced') = N / (C * count_c), written
  # out by hand for counts 6 / 2 / 1 / 0 of N = 9 over C = 4.
  labels = np.array([0] * 6 + [1] * 2 + [2])
  w = losses.balanced_class_weights(labels, 4)
  np.testing.assert_allclose(w, [9 / 24, 9 / 8, 9 / 4, 0.0], rtol=1e-6)
  # Each class then carries the same total weight.
  np.testing.assert_allclose(np.bincount(labels, weights=w[labels]),
                             [2.25, 2.25, 2.25])


def _masked_ce_numpy(logits, labels, mask, eps):
  """NumPy reference: cross-entropy over each row's valid classes only,
  the label smoothed uniformly over those classes."""
  out = []
  for z, y, m in zip(logits.astype(np.float64), labels, mask):
    zv = z[m]
    logp = zv - zv.max() - np.log(np.exp(zv - zv.max()).sum())
    t = np.full(m.sum(), eps / m.sum())
    t[np.flatnonzero(m).tolist().index(y)] += 1 - eps
    out.append(-(t * logp).sum())
  return float(np.mean(out))


@pytest.mark.parametrize('seed', [0, 1])
def test_masked_classification_loss_matches_numpy(seed):
  # iCaRL's replay (issue 25): smoothing spreads over the valid classes only.
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(6, 9)).astype(np.float32)
  mask = np.zeros((6, 9), bool)
  for i, (lo, hi) in enumerate([(0, 3), (3, 7), (7, 9)] * 2):
    mask[i, lo:hi] = True
  labels = np.array([rng.integers(lo, hi) for lo, hi in
                     [(0, 3), (3, 7), (7, 9)] * 2])
  got = float(losses.classification_loss(
      jnp.asarray(logits), jnp.asarray(labels), label_smoothing=0.2,
      mask=jnp.asarray(mask)))
  assert got == pytest.approx(_masked_ce_numpy(logits, labels, mask, 0.2),
                              rel=1e-5)
  # Of the order of ln C, not the 1e8 that mass on -1e9 logits gave; the
  # excluded logits' values do not matter.
  assert got < 2 * math.log(9)
  far = np.where(mask, logits, -1e9).astype(np.float32)
  assert float(losses.classification_loss(
      jnp.asarray(far), jnp.asarray(labels), label_smoothing=0.2,
      mask=jnp.asarray(mask))) == pytest.approx(got, rel=1e-6)
  # The old behaviour, uniform smoothing over all C columns, is far off.
  old = float(losses.classification_loss(jnp.asarray(far),
                                         jnp.asarray(labels),
                                         label_smoothing=0.2))
  assert old > 1e6


def test_masked_loss_gives_no_gradient_to_excluded_classes():
  logits = jnp.asarray([[0.3, -0.2, 1.0, 0.5]])
  mask = jnp.asarray([[True, True, False, False]])
  g = jax.grad(lambda z: losses.classification_loss(
      z, jnp.asarray([0]), label_smoothing=0.2, mask=mask))(logits)
  np.testing.assert_allclose(np.asarray(g)[0, 2:], 0.0)
  # The valid logits' gradient sums to zero: no common push down.
  assert abs(float(g[0, :2].sum())) < 1e-6
