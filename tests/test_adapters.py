"""Tests for mgtil_jax.models.adapters (MoE-Adapters, DIKI) and their CLIP
hooks.

References are independent computations: the plain model (the frozen
backbone), NumPy re-implementations of top-k gating, of the expert mixture and
of the prompt-attention branch, and scipy's multivariate normal density. The
last part trains the tiny preset on two tasks of the synthetic benchmark with
a minimal loop (not train.run) and checks that the backbone never moves and
that learning task 1 leaves task 0's predictions unchanged. (That the loss
goes down needs a pretrained backbone -- a random tiny text tower gives all
class prompts the same embedding -- so it is shown by
benchmarks/adapters_two_tasks.py, which pretrains first.)
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from scipy import special, stats

from mgtil_jax.data import benchmarks, synth
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.models import adapters, clip
from mgtil_jax.models.tokenizer import Tokenizer, write_vocab

CFG = clip.get_preset('tiny')
# Small adapters so that everything compiles quickly on CPU.
SMALL = dict(num_tasks=2, num_experts=6, top_k=2, rank=8, prompt_length=4)
METHODS = ('moe_adapters', 'diki')


def _adapter(method):
  return adapters.config_for_method(method, **SMALL)


def _paths(tree):
  return {jax.tree_util.keystr(p): v
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _is_adapter_path(path: str) -> bool:
  return 'adapter' in path or 'prompt' in path


@functools.lru_cache(maxsize=None)
def _init(method):
  """(model, params) from key 0 (an rbg key: it compiles faster on CPU).
  method None: the plain model, with the backbone of the MoE model's params
  (the tree comparison in the first test shows they are the plain tree)."""
  if method is None:
    return (clip.make_model(CFG),
            _backbone(_init('moe_adapters')[1]))
  model = clip.make_model(CFG, adapter=_adapter(method))
  params = jax.jit(lambda k: nn.unbox(clip.init_params(model, k)))(
      jax.random.key(0, impl='rbg'))
  return model, params


def _backbone(params):
  """params without the adapter leaves (nested dicts)."""
  return {k: _backbone(v) if isinstance(v, dict) else v
          for k, v in params.items() if not _is_adapter_path(k)}


@functools.lru_cache(maxsize=None)
def _encoder(model):
  """Jitted (params, images, tokens) -> the (image, text) embeddings of the
  adapted path in training mode and at test time (task 1), and of task_id
  None: one compilation per model."""
  @jax.jit
  def encode(params, images, tokens):
    return [model.apply({'params': params}, images, tokens, task_id=task_id,
                        train=train)[:2]
            for train, task_id in ((True, 1), (False, 1), (False, None))]
  return encode


def _images(n, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(
      size=(n, CFG.vision.image_size, CFG.vision.image_size, 3)), jnp.float32)


def _tokens(n, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, CFG.text.vocab_size, (n, CFG.text.context_length))
  tokens[:, 6:] = CFG.text.pad_id  # padded like real prompts
  return jnp.asarray(tokens, jnp.int32)


# ------------------------------------------------ the plain model unchanged --


def test_no_adapter_params_and_outputs_are_the_plain_model():
  plain, plain_params = _init(None)
  shapes = lambda tree: {p: v.shape for p, v in _paths(tree).items()}
  plain_tree = shapes(nn.unbox(jax.eval_shape(
      lambda k: clip.init_params(plain, k), jax.random.key(0))))
  assert not any(_is_adapter_path(p) for p in plain_tree)
  # The adapter models only add leaves: without them their tree is the plain
  # one, and from the same key the backbone values are the same.
  assert shapes(plain_params) == plain_tree
  _, diki_params = _init('diki')
  backbone = _paths(_backbone(diki_params))
  assert shapes(_backbone(diki_params)) == plain_tree
  for p, v in _paths(plain_params).items():
    np.testing.assert_array_equal(np.asarray(backbone[p]), np.asarray(v))
  # The plain model ignores task_id / train.
  (train, test, none) = _encoder(plain)(plain_params, _images(4), _tokens(6))
  for a, b, c in zip(train, test, none):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    np.testing.assert_array_equal(np.asarray(b), np.asarray(c))


@pytest.mark.parametrize('method', METHODS)
def test_adapters_at_init_are_the_frozen_backbone(method):
  """Zero-initialised up projections (MoE) / prompt values (DIKI): the adapted
  model starts exactly at the pre-trained one; task_id=None and untrained
  tasks at test time are the frozen backbone."""
  plain, plain_params = _init(None)
  model, params = _init(method)
  images, tokens = _images(4), _tokens(6)
  ref = [np.asarray(x) for x in _encoder(plain)(plain_params, images,
                                                  tokens)[2]]
  for got in _encoder(model)(params, images, tokens):
    for g, r in zip(got, ref):
      np.testing.assert_allclose(np.asarray(g), r, rtol=1e-6, atol=1e-7)


def test_bad_adapter_config_names_the_field():
  with pytest.raises(ValueError, match=r'AdapterConfig\.top_k'):
    adapters.AdapterConfig(kind='moe', num_tasks=2, num_experts=2, top_k=3)
  with pytest.raises(ValueError, match=r'AdapterConfig\.towers'):
    adapters.AdapterConfig(kind='diki', num_tasks=2, towers=('audio',))
  with pytest.raises(ValueError, match=r'config\.method'):
    adapters.config_for_method('lwf', num_tasks=2)
  with pytest.raises(ValueError, match=r'config\.method'):
    adapters.trainable_mask({}, 'ft')


def test_real_preset_adapter_param_counts():
  """Counts derived from the papers' architectures: MoE-Adapters adds, per
  block of both 12-layer towers (width 768), T routers and T noise routers
  (768 x 22 each) and 22 experts 768 -> 64 -> 768 with biases; DIKI adds per
  task 8 key and 8 value prompts of width 768 in the first 8 blocks of both
  towers."""
  cfg = clip.get_preset('vit_b16_pubmedbert')
  count = lambda tree, pred: sum(  # pylint: disable=g-long-lambda
      int(np.prod(v.shape)) for p, v in _paths(tree).items() if pred(p))
  t, d, e, r = 9, 768, 22, 64
  for method, per_block, blocks in (
      ('moe_adapters', 2 * t * d * e + e * (d * r + r + r * d + d), 24),
      ('diki', t * 2 * 8 * d, 16)):
    model = clip.make_model(cfg, adapter=adapters.config_for_method(
        method, num_tasks=t))
    shapes = nn.unbox(jax.eval_shape(lambda k, m=model: clip.init_params(m, k),
                                     jax.random.key(0)))
    mask = _paths(adapters.trainable_mask(shapes, method))
    assert count(shapes, lambda p: mask[p]) == per_block * blocks
    # Everything else is the plain model plus a few buffers.
    assert not any(mask[p] for p in mask if not _is_adapter_path(p))


def test_merge_backbone_and_task_flags():
  adapted = {'visual': {'w': np.zeros(2), 'block0': {'moe_adapter': {
      'router': np.ones(3)}}}, 'adapter_state': {'task_trained': np.zeros(3)}}
  loaded = {'visual': {'w': np.full(2, 7.0)}}
  out = adapters.merge_backbone(adapted, loaded)
  np.testing.assert_array_equal(out['visual']['w'], [7, 7])
  assert out['visual']['block0'] is adapted['visual']['block0']
  with pytest.raises(ValueError, match='lack'):
    adapters.merge_backbone(adapted, {'text': {}})
  out = adapters.mark_task_trained(out, 2)
  np.testing.assert_array_equal(out['adapter_state']['task_trained'],
                                [0, 0, 1])
  with pytest.raises(ValueError, match='adapter_state/task_trained'):
    adapters.mark_task_trained(loaded, 0)


# ------------------------------------------------------------ MoE routing --


def _np_top_k_gates(logits, k):
  idx = np.argsort(-logits, axis=-1, kind='stable')[:, :k]
  top = np.take_along_axis(logits, idx, axis=-1)
  g = np.exp(top - top.max(-1, keepdims=True))
  return g / g.sum(-1, keepdims=True), idx


def test_top_k_gates_match_numpy():
  logits = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32)
  gates, idx = adapters.top_k_gates(jnp.asarray(logits), 2)
  ref_gates, ref_idx = _np_top_k_gates(logits.astype(np.float64), 2)
  np.testing.assert_array_equal(np.asarray(idx), ref_idx)
  np.testing.assert_allclose(np.asarray(gates), ref_gates, rtol=1e-6)


def test_moe_adapter_matches_numpy():
  cfg = adapters.AdapterConfig(kind='moe', num_tasks=3, num_experts=5,
                               top_k=2, rank=4)
  layer = adapters.MoEAdapter(cfg)
  b, length, d, task = 3, 5, 8, 2
  x = np.random.default_rng(1).normal(size=(b, length, d)).astype(np.float32)
  weight = np.array([1.0, 0.5, 0.0], np.float32)
  params = nn.unbox(layer.init(jax.random.key(0), x, 0, 1.0)['params'])
  # Random values everywhere (the init has zero routers and up projections).
  rng = np.random.default_rng(2)
  params = jax.tree.map(lambda v: jnp.asarray(
      rng.normal(size=v.shape), jnp.float32), params)
  got = np.asarray(jax.jit(layer.apply)({'params': params}, x, task, weight))

  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  logits = x[:, 0].astype(np.float64) @ p['router'][task]
  gates, idx = _np_top_k_gates(logits, cfg.top_k)
  ref = np.zeros((b, length, d))
  for i in range(b):
    for g, e in zip(gates[i], idx[i]):
      h = np.maximum(x[i] @ p['down_kernel'][e] + p['down_bias'][e], 0)
      ref[i] += g * cfg.scale * (h @ p['up_kernel'][e] + p['up_bias'][e])
    ref[i] *= weight[i]
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_freeze_experts_takes_the_most_used():
  params = {'visual': {'block0': {'moe_adapter': {
      'expert_frozen': jnp.asarray([0., 0., 1., 0., 0.])}}}}
  path = ('visual', 'block0', 'moe_adapter')
  out = adapters.freeze_experts(params, {path: np.array([3, 9, 0, 9, 1])}, 2)
  # Experts 1 and 3 (count 9) join expert 2, frozen before.
  np.testing.assert_array_equal(
      np.asarray(out['visual']['block0']['moe_adapter']['expert_frozen']),
      [0, 1, 1, 1, 0])
  out = adapters.freeze_experts(params, {path: np.array([0, 4, 0, 0, 0])}, 2)
  np.testing.assert_array_equal(  # unused experts are never frozen
      np.asarray(out['visual']['block0']['moe_adapter']['expert_frozen']),
      [0, 1, 1, 0, 0])


# ------------------------------------------------------------------ DIKI --


def test_prompt_attention_matches_numpy():
  heads, b, length, d, n_prompt = 2, 3, 5, 8, 4
  attn = clip.Attention(heads)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(b, length, d)).astype(np.float32)
  keys = rng.normal(size=(n_prompt, d)).astype(np.float32)
  values = rng.normal(size=(n_prompt, d)).astype(np.float32)
  weight = np.array([1.0, 0.3, 0.0], np.float32)
  params = nn.unbox(attn.init(jax.random.key(0), x)['params'])
  got = np.asarray(jax.jit(attn.apply)({'params': params}, x, None,
                                       (keys, values, weight)))

  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
  proj = lambda name, t: t @ p[name]['kernel'] + p[name]['bias']
  split = lambda t: t.reshape(t.shape[:-1] + (heads, d // heads))

  def softmax_attend(q, k, v):  # q [L, H, hd], k/v [S, H, hd]
    s = np.einsum('qhd,khd->hqk', q, k) / np.sqrt(d // heads)
    s = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum('hqk,khd->qhd', s / s.sum(-1, keepdims=True), v)

  ref = []
  for i in range(b):
    q, k, v = (split(proj(n, x[i])) for n in ('query', 'key', 'value'))
    out = softmax_attend(q, k, v) + weight[i] * softmax_attend(
        q, split(keys), split(values))
    ref.append(proj('out', out.reshape(length, d)))
  np.testing.assert_allclose(got, np.stack(ref), rtol=1e-4, atol=1e-5)
  # Weight 0 is exactly the attention without prompts.
  plain = np.asarray(jax.jit(attn.apply)({'params': params}, x))
  np.testing.assert_array_equal(got[2], plain[2])


def test_calibration_weight_matches_scipy_gaussian():
  rng = np.random.default_rng(4)
  d, n = 8, 400
  center = rng.normal(size=d)
  center /= np.linalg.norm(center)
  # A tight cluster of unit vectors, as l2-normalised features are.
  train = center + 3e-4 * rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
  train /= np.linalg.norm(train, axis=1, keepdims=True)
  st = adapters.fit_calibration(train)
  near = train[:5]
  far = -train[:5]  # the opposite side of the sphere
  queries = np.concatenate([near, far])
  got = np.asarray(adapters.calibration_weight(
      jnp.asarray(queries, jnp.float32), st.mean, st.whiten, st.log_norm))

  gauss = stats.multivariate_normal(train.mean(0), np.cov(train.T) +
                                    1e-7 * np.eye(d))
  ref = special.expit(gauss.logpdf(queries) / d - 1)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
  assert (got[:5] > 0.99).all() and (got[5:] < 1e-6).all()


def test_fit_calibration_bad_input():
  with pytest.raises(ValueError, match='N >= 2'):
    adapters.fit_calibration(np.zeros((1, 4)))
  with pytest.raises(ValueError, match='positive definite'):
    adapters.fit_calibration(np.zeros((5, 4)), ridge=0.0)


# ------------------------- two tasks of the synthetic benchmark, end to end --

TASKS = 'path_grade+fundus_disc'  # two domains, three classes each
LR = {'moe_adapters': 1e-2, 'diki': 3e-2}
STEPS, BATCH = 8, 32


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
  data = ml_collections.ConfigDict(dict(
      name='mgtil_synth', order=TASKS, num_tasks=0, image_size=32,
      train_per_class=40, test_per_class=16, seed=0))
  task_list = benchmarks.load_benchmark(data)
  vocab = write_vocab(synth.vocabulary(),
                      str(tmp_path_factory.mktemp('tok') / 'vocab.txt'))
  tok = Tokenizer(vocab, CFG.text.context_length)
  prompts = [jnp.asarray(tok([f'a photo of {c}.' for c in t.class_names]))
             for t in task_list]
  return task_list, prompts


def _run_two_tasks(method, bench):
  """Trains task 0 then task 1 with only the adapters; returns snapshots."""
  task_list, prompts = bench
  model, params = _init(method)
  labels = adapters.optimizer_labels(params, method)
  tx = optax.multi_transform({'train': optax.adam(LR[method]),
                              'frozen': optax.set_to_zero()}, labels)

  @jax.jit
  def step(params, opt, images, target, prompt_tokens, task_id, key):
    def loss_fn(p):
      logits = clip.classify_logits(
          model, p, tasks_lib.preprocess(images), prompt_tokens, 1,
          task_id=task_id, train=True, rngs={'gating': key})
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, target).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    updates = adapters.mask_updates(updates, params, task_id)
    return optax.apply_updates(params, updates), opt, loss

  @jax.jit
  def logits_fn(params, images, prompt_tokens, task_id):
    return clip.classify_logits(model, params, tasks_lib.preprocess(images),
                                prompt_tokens, 1, task_id=task_id)

  def evaluate(params, j):
    return np.asarray(logits_fn(params, task_list[j].test_images, prompts[j],
                                j))

  out = {'model': model, 'init': params, 'zero_shot': [
      evaluate(params, j) for j in range(2)]}
  for t, task in enumerate(task_list):
    opt = tx.init(params)
    for s in range(STEPS):
      idx = tasks_lib.batch_indices(len(task.train_labels), BATCH, s, 0, t)
      params, opt, _ = step(params, opt, task.train_images[idx],
                            task.train_labels[idx], prompts[t],
                            jnp.int32(t), jax.random.key(100 * t + s))
    # End of task t.
    params = adapters.mark_task_trained(params, t)
    images = tasks_lib.preprocess(task.train_images)
    if method == 'diki':
      feats = jax.jit(functools.partial(adapters.calibration_features,
                                        model))(params, images)
      params = adapters.set_calibration(params, t,
                                        adapters.fit_calibration(feats))
      out[f'features_{t}'] = np.asarray(feats)
    elif t == 0:
      # Activate-freeze (paper: top-2 per block over the task's data). Here
      # every expert that task 0 selects on its test images is frozen, so
      # that learning task 1 must leave those predictions unchanged.
      counts = jax.jit(functools.partial(adapters.expert_counts, model))(
          params, tasks_lib.preprocess(task.test_images), prompts[0], 0)
      params = adapters.freeze_experts(params, counts, SMALL['num_experts'])
    out[f'after_{t}'] = params
    out[f'eval_after_{t}'] = [evaluate(params, j) for j in range(2)]
  return out


_RUNS = {}


def _get_run(method, bench):
  if method not in _RUNS:
    _RUNS[method] = _run_two_tasks(method, bench)
  return method, _RUNS[method], bench


@pytest.fixture(scope='module', params=METHODS)
def run(request, bench):
  return _get_run(request.param, bench)


def test_training_changes_only_adapters(run):
  method, out, _ = run
  init, final = _paths(out['init']), _paths(out['after_1'])
  mask = _paths(adapters.trainable_mask(out['init'], method))
  changed = set()
  for p, v in init.items():
    if not mask[p]:
      if 'adapter_state' in p or 'expert_frozen' in p:
        continue  # buffers, set at task ends
      np.testing.assert_array_equal(np.asarray(final[p]), np.asarray(v),
                                    err_msg=p)
    elif not np.array_equal(np.asarray(final[p]), np.asarray(v)):
      changed.add(p.rsplit("['", 1)[-1].rstrip("']"))
  expected = ({'router', 'down_kernel', 'down_bias', 'up_kernel', 'up_bias'}
              if method == 'moe_adapters' else {'key', 'value'})
  assert expected <= changed


def test_untrained_task_is_zero_shot(run):
  """What DDAS / the calibration decide for inputs of an unseen task: the
  pre-trained model. Task 1's logits after training task 0 are bitwise those
  before any training (which are the plain model's: see
  test_adapters_at_init_are_the_frozen_backbone), although task 0's adapters
  -- shared experts included -- have moved."""
  _, out, _ = run
  np.testing.assert_array_equal(out['eval_after_0'][1], out['zero_shot'][1])
  assert not np.array_equal(out['eval_after_0'][0], out['zero_shot'][0])


def test_learning_task_1_keeps_task_0(run):
  method, out, _ = run
  np.testing.assert_array_equal(out['eval_after_1'][0],
                                out['eval_after_0'][0])
  # Task 0's own rows (router / prompts) did not move during task 1.
  a, b = _paths(out['after_0']), _paths(out['after_1'])
  task_rows = [p for p in a if p.endswith(("['router']", "['router_noise']",
                                           "['key']", "['value']"))]
  assert task_rows
  for p in task_rows:
    np.testing.assert_array_equal(np.asarray(b[p])[0], np.asarray(a[p])[0])
    if method == 'diki' or 'noise' not in p:
      assert not np.array_equal(np.asarray(b[p])[1], np.asarray(a[p])[1]), p


def test_diki_calibration_separates_the_tasks(bench):
  """Task 0's Gaussian gives its own images a larger prompt weight than
  another domain's, and the stored statistics reproduce scipy's density."""
  _, out, _ = _get_run('diki', bench)
  st = out['after_1']['adapter_state']
  f0, f1 = out['features_0'], out['features_1']
  w = lambda f: np.asarray(adapters.calibration_weight(
      jnp.asarray(f), st['calib_mean'][0], st['calib_whiten'][0],
      st['calib_log_norm'][0]))
  assert np.median(w(f0)) > np.median(w(f1))
  d = f0.shape[1]
  gauss = stats.multivariate_normal(f0.mean(0), np.cov(f0.T.astype(np.float64))
                                    + 1e-7 * np.eye(d), allow_singular=True)
  ref = special.expit(gauss.logpdf(f1[:8]) / d - 1)
  np.testing.assert_allclose(w(f1[:8]), ref, rtol=1e-3, atol=1e-6)
