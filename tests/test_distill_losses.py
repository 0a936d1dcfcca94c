"""PRIMED's losses (CKT, CMC, DFG) and the KD of the baselines, against
plain NumPy references written out in float64 here."""

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


def np_kl_rows(teacher, student):
  """mean_r sum_c p_t (log p_t - log p_s), row-wise softmax."""
  lt, ls = np_log_softmax(teacher, 1), np_log_softmax(student, 1)
  return float((np.exp(lt) * (lt - ls)).sum(1).mean())


def np_ckt(student, teacher, tau, direction):
  s, t = np.asarray(student, np.float64) / tau, np.asarray(teacher,
                                                           np.float64) / tau
  rows, cols = np_kl_rows(t, s), np_kl_rows(t.T, s.T)
  return {'both': rows + cols, 'image': rows, 'text': cols}[direction]


def np_cmc(logits, direction):
  logits = np.asarray(logits, np.float64)
  i2t = -np.diag(np_log_softmax(logits, 1)).mean()
  t2i = -np.diag(np_log_softmax(logits, 0)).mean()
  return float({'both': i2t + t2i, 'image': i2t, 'text': t2i}[direction])


_ckt = jax.jit(lambda s, t, tau, d: losses.cross_modal_kd(
    s, t, temperature=tau, direction=d), static_argnums=(2, 3))
_cmc = jax.jit(lambda z, d: losses.cross_modal_contrastive(z, direction=d),
               static_argnums=1)


@pytest.mark.parametrize('direction', losses.DIRECTIONS)
@pytest.mark.parametrize('tau', [0.5, 1.0, 2.0])
def test_ckt_matches_numpy(direction, tau):
  rng = np.random.default_rng(int(tau * 10))
  student = rng.normal(0, 3, (5, 5)).astype(np.float32)
  teacher = rng.normal(0, 3, (5, 5)).astype(np.float32)
  got = float(_ckt(student, teacher, tau, direction))
  assert got == pytest.approx(np_ckt(student, teacher, tau, direction),
                              rel=1e-4)


def test_ckt_batch_of_one_is_zero():
  # One row and one column: both softmaxes are [1] whatever the logits.
  assert float(_ckt(jnp.array([[4.0]]), jnp.array([[-2.0]]), 1.0,
                    'both')) == pytest.approx(0.0, abs=1e-7)


def test_ckt_ties_hand_case():
  # Teacher uniform (all ties) over B = 2; student row [0, log 3] gives
  # p_s = [1/4, 3/4]: KL(u || p_s) = 0.5 log(0.5/0.25) + 0.5 log(0.5/0.75).
  student = jnp.array([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
  teacher = jnp.zeros((2, 2))
  expected_rows = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
  got = float(_ckt(student, teacher, 1.0, 'image'))
  assert got == pytest.approx(expected_rows, rel=1e-5)
  # Columns of this student are constant -> uniform -> KL to uniform is 0.
  assert float(_ckt(student, teacher, 1.0, 'text')) == pytest.approx(
      0.0, abs=1e-6)


def test_ckt_is_zero_when_student_equals_teacher_and_gives_teacher_no_grad():
  z = jnp.asarray(np.random.default_rng(0).normal(size=(4, 4)), jnp.float32)
  assert float(_ckt(z, z, 2.0, 'both')) == pytest.approx(0.0, abs=1e-6)
  g_teacher = jax.grad(lambda t: losses.cross_modal_kd(z + 1.0, t))(z)
  assert np.all(np.asarray(g_teacher) == 0.0)


@pytest.mark.parametrize('direction', losses.DIRECTIONS)
def test_cmc_matches_numpy(direction):
  logits = np.random.default_rng(3).normal(0, 4, (6, 6)).astype(np.float32)
  assert float(_cmc(logits, direction)) == pytest.approx(
      np_cmc(logits, direction), rel=1e-5)


def test_cmc_ties_and_batch_of_one():
  assert float(_cmc(jnp.full((3, 3), 2.0), 'both')) == pytest.approx(
      2 * math.log(3), rel=1e-6)
  assert float(_cmc(jnp.array([[1.0]]), 'both')) == pytest.approx(0.0,
                                                                   abs=1e-7)


def test_bad_direction_names_the_choices():
  with pytest.raises(ValueError, match='image'):
    losses.cross_modal_kd(jnp.zeros((2, 2)), jnp.zeros((2, 2)),
                          direction='rows')


def _tree(seed):
  rng = np.random.default_rng(seed)
  return {'w': jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
          'b': {'c': jnp.asarray(rng.normal(size=(4,)), jnp.float32)}}


def test_dfg_value_matches_numpy():
  params, prev, grads = _tree(0), _tree(1), _tree(2)
  expected = sum(
      float(np.sum(np.float64(g) ** 2 * (np.float64(p) - np.float64(q)) ** 2))
      for p, q, g in zip(jax.tree.leaves(params), jax.tree.leaves(prev),
                         jax.tree.leaves(grads)))
  got = jax.jit(losses.dynamic_fisher_guard)(params, prev, grads)
  assert float(got) == pytest.approx(expected, rel=1e-5)


def test_dfg_is_zero_at_previous_params():
  params, grads = _tree(0), _tree(2)
  assert float(losses.dynamic_fisher_guard(params, params, grads)) == 0.0


def test_dfg_gradient_is_2w_times_displacement():
  # d/dtheta sum W (theta - theta_prev)^2 = 2 W (theta - theta_prev), with W
  # held constant: no gradient flows into W even though W = g^2 is built from
  # a tree that is the same object as the params here.
  params, prev = _tree(0), _tree(1)
  grad = jax.grad(lambda p: losses.dynamic_fisher_guard(p, prev, p))(params)
  for g, p, q in zip(jax.tree.leaves(grad), jax.tree.leaves(params),
                     jax.tree.leaves(prev)):
    w = np.float64(p) ** 2
    np.testing.assert_allclose(np.asarray(g), 2 * w * (np.float64(p) - q),
                               rtol=1e-5, atol=1e-6)


def test_weighted_l2_without_weights_is_l2():
  a, b = _tree(0), _tree(1)
  assert float(losses.weighted_l2(a, b)) == pytest.approx(
      float(losses.l2_to_anchor(a, b)))


@pytest.mark.parametrize('tau', [1.0, 2.0])
def test_distillation_kl_matches_numpy(tau):
  rng = np.random.default_rng(7)
  s = rng.normal(0, 2, (4, 3)).astype(np.float32)
  t = rng.normal(0, 2, (4, 3)).astype(np.float32)
  expected = np_kl_rows(np.float64(t) / tau, np.float64(s) / tau) * tau ** 2
  got = losses.distillation_kl(s, t, temperature=tau)
  assert float(got) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize('normalize', ['none', 'mean', 'max'])
def test_dfg_normalisation_matches_numpy(normalize):
  rng = np.random.default_rng(7)
  g = {'a': rng.normal(size=(4, 3)) * 1e-4, 'b': rng.normal(size=5)}
  p = {k: rng.normal(size=v.shape) for k, v in g.items()}
  q = {k: rng.normal(size=v.shape) for k, v in g.items()}
  want = 0.0
  for k in g:
    w = np.square(g[k])
    w = {'none': w, 'mean': w / w.mean(), 'max': w / w.max()}[normalize]
    want += float((w * (p[k] - q[k]) ** 2).sum())
  f32 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)
  got = losses.dynamic_fisher_guard(f32(p), f32(q), f32(g),
                                    normalize=normalize)
  assert float(got) == pytest.approx(want, rel=1e-4)
  if normalize == 'mean':  # weights average 1 per tensor, whatever g's scale
    w = losses.dfg_weights(f32(g), normalize='mean')
    assert float(jnp.mean(w['a'])) == pytest.approx(1.0, rel=1e-5)


def test_dfg_normalisation_is_named_when_bad():
  with pytest.raises(ValueError, match='dfg_normalize'):
    losses.dfg_weights({'a': jnp.ones(2)}, normalize='sum')


def np_snd(s, prev, init, threshold, scale):
  s, prev, init = (np.asarray(x, np.float64) for x in (s, prev, init))
  score = 1 / (1 + np.exp(-scale * (np.linalg.norm(prev - init, axis=1)
                                    - threshold)))
  return (float(np.mean(score * np.linalg.norm(s - prev, axis=1))),
          float(np.mean((1 - score) * np.linalg.norm(s - init, axis=1))))


def test_selective_dual_teacher_kd_matches_numpy():
  rng = np.random.default_rng(3)
  s, prev, init = (rng.normal(size=(6, 4)).astype(np.float32)
                   for _ in range(3))
  init[:2] = prev[:2]  # teachers agree: these rows go to the initial model
  got = losses.selective_dual_teacher_kd(s, prev, init, threshold=0.3,
                                         scale=5.0)
  want = np_snd(s, prev, init, 0.3, 5.0)
  np.testing.assert_allclose([float(x) for x in got], want, rtol=1e-5)
  # B = 1, student = previous teacher, teachers far apart: both ~0.
  far = np.array([[10.0, 0.0]], np.float32)
  one = losses.selective_dual_teacher_kd(far, far, -far)
  assert float(one[0]) == 0.0 and float(one[1]) < 1e-10


def np_ita(logits, same, smoothing):
  logits = np.asarray(logits, np.float64)
  t = same / same.sum(1, keepdims=True)
  t = t * (1 - smoothing) + smoothing / t.shape[1]
  rows = -(t * np_log_softmax(logits, 1)).sum(1).mean()
  cols = -(t.T * np_log_softmax(logits.T, 1)).sum(1).mean()
  return float(rows + cols)


@pytest.mark.parametrize('smoothing', [0.0, 0.2])
def test_soft_image_text_alignment_matches_numpy(smoothing):
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(5, 5)).astype(np.float32)
  cls = np.array([0, 1, 0, 2, 1])
  same = cls[:, None] == cls[None, :]
  got = losses.soft_image_text_alignment(logits, same,
                                         label_smoothing=smoothing)
  assert float(got) == pytest.approx(np_ita(logits, same, smoothing),
                                     rel=1e-5)
  # Unique captions: the identity targets of CMC ('both').
  eye = np.eye(5, dtype=bool)
  assert float(losses.soft_image_text_alignment(logits, eye)) == \
      pytest.approx(np_cmc(logits, 'both'), rel=1e-5)
