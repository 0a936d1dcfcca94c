"""Parameter-efficient continual-learning baselines on a frozen CLIP:
MoE-Adapters and DIKI.

MoE-Adapters -- Yu et al., "Boosting Continual Learning of Vision-Language
Models via Mixture-of-Experts Adapters", CVPR 2024 (official code:
JiazuoYu/MoE-Adapters4CL, `mtil/clip/model.py`, `mtil/src/models/finetune.py`).
As there: in every transformer block of both towers a mixture of bottleneck
adapters (down d -> 64, ReLU, up 64 -> d, both with bias, the up projection
zero-initialised, output x 0.1) runs parallel to the MLP on the block's
residual stream; experts are shared by all tasks, each task has its own router
and noise router (both zero-initialised); the router reads the first token
([CLS]) of the block input, so one sample uses the same experts at every
position; noisy top-k gating (Shazeer et al. 2017: noise std =
softplus(x W_noise) + 1e-2, training only), softmax over the top-k logits;
defaults 22 experts, top-2. Activate-freeze: after a task the `freeze_top`
(2) experts it selected most often in each block stay frozen for all later
tasks.
Simplified / changed:
- DDAS (autoencoders that send out-of-distribution inputs to the frozen CLIP)
  is not trained: in MGTIL the task id is known at test time (docs/metrics.md,
  "How an entry is measured"), so the decision DDAS makes is read off the
  id -- a task already trained uses its router and the experts; a task not
  yet trained gets the frozen backbone, i.e. zero-shot CLIP, which is what
  DDAS decides for out-of-distribution inputs (flag
  `adapter_state/task_trained`).
- Expert usage for activate-freeze is counted by a noise-free pass over the
  task's training images at the end of the task (`expert_counts`), not
  accumulated during the noisy training steps.
- No adapter dropout (official: 0.1). The load-balancing loss is not used;
  the official code computes it but never adds it to the loss.

DIKI -- Tang et al., "Mind the Interference: Retaining Pre-trained Knowledge in
Parameter Efficient Continual Learning of Vision-Language Models", ECCV 2024
(official code: lloongx/DIKI, `clip/attention.py`, `DIKI/DIKI.py`).
As there: residual attention prompts -- per task, learnable keys P_k (uniform
in [-1, 1]) and values P_v (zeros) of length 8 in the first 8 blocks of both
towers, living in the projected key/value space; a block's attention becomes
  out( Attn(q, K, V) + w * Attn(q, P_k, P_v) )
with a separate softmax over the prompt positions, so the pre-trained
attention is untouched and with P_v = 0 (or w = 0) the model is exactly the
pre-trained one. Distribution-aware calibration: a Gaussian (mean, covariance
+ 1e-7 I) of the task's l2-normalised training image features from the frozen
model; a test image with log-density log p gets w = sigmoid(log p / D - 1)
(D = embedding size; the official code hard-codes its D = 512); training uses
w = 1.
Simplified / changed:
- The task id is known, so the prompt of that task is used (DIKI picks the
  task of maximum likelihood); the image weight is still the calibrated one
  against that task's Gaussian. Tasks not yet trained get w = 0: exactly the
  pre-trained model.
- The text tower's prompt weight is 1 for trained tasks (0 otherwise) instead
  of the batch mean of the image weights: class embeddings are computed once
  per task, independently of the image batch.

Interface (the trainer's side)
------------------------------
  adapter = adapters.config_for_method('moe_adapters' | 'diki', num_tasks=T,
                                       **overrides)
  model = clip.make_model(cfg, dtype=..., remat=..., adapter=adapter)
  params = nn.unbox(clip.init_params(model, key))   # backbone + adapters
  # optimiser: only adapter leaves train
  labels = adapters.optimizer_labels(params, method)  # 'train' / 'frozen'
  tx = optax.multi_transform({'train': adamw, 'frozen': optax.set_to_zero()},
                             labels)
  # train step for task t (task_id: int32[] array, traced: one compilation):
  logits = clip.classify_logits(model, params, images, prompts, n_templates,
                                task_id=task_id, train=True,
                                rngs={'gating': key})   # key: MoE noise only
  updates, opt = tx.update(grads, opt, params)
  updates = adapters.mask_updates(updates, params, task_id)  # other tasks'
  params = optax.apply_updates(params, updates)   # rows, frozen experts: 0
  # evaluation of task j (every task, trained or not):
  logits = clip.classify_logits(..., task_id=j)   # train=False, no rngs
  # end of task t (host side, between tasks):
  params = adapters.mark_task_trained(params, t)
  MoE:  counts = sum over batches of adapters.expert_counts(
            model, params, images, prompt_tokens, t)
        params = adapters.freeze_experts(params, counts, adapter.freeze_top)
  DIKI: feats = concat over batches of adapters.calibration_features(
            model, params, images)
        params = adapters.set_calibration(params, t,
                                          adapters.fit_calibration(feats))
`task_id=None` (the default everywhere) is the frozen backbone, so the plain
call of an adapter model is zero-shot CLIP. Everything the adapted model needs
at test time -- the `task_trained` flags, the per-block `expert_frozen` flags,
DIKI's Gaussians -- is a buffer stored in the params tree (under
`adapter_state/...` and `.../moe_adapter/expert_frozen`), so checkpoints,
shardings and restores need nothing new; buffers are never trained.

Parameter names (all contain `adapter` or `prompt`; logical axes in brackets,
names without a sharding rule are replicated):
  {visual,text}/block{i}/moe_adapter/router         [T, D, E]  (adapter_task,
                                    embed, expert); router_noise likewise
                       .../moe_adapter/down_kernel   [E, D, r]; down_bias [E, r]
                       .../moe_adapter/up_kernel     [E, r, D]; up_bias [E, D]
                       .../moe_adapter/expert_frozen [E]  buffer
  {visual,text}/block{i}/prompt/{key,value}         [T, P, D]  (adapter_task,
                                    prompt_length, qkv)
  adapter_state/task_trained [T]; DIKI: calib_mean [T, D_e],
                calib_whiten [T, D_e, D_e], calib_log_norm [T]  buffers
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# config.method names -> adapter kind.
METHOD_KINDS = {'moe_adapters': 'moe', 'diki': 'diki'}
TOWERS = ('visual', 'text')
_EXPERT_LEAVES = ('down_kernel', 'down_bias', 'up_kernel', 'up_bias')
_TASK_LEAVES = ('router', 'router_noise', 'key', 'value')


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """Settings of the adapters (hashable: it is a module attribute)."""
  kind: str                     # 'moe' (MoE-Adapters) or 'diki'
  num_tasks: int                # routers / prompt sets allocated up front
  towers: tuple = TOWERS        # towers that get adapters (paper: both)
  # MoE-Adapters (official defaults).
  num_experts: int = 22
  top_k: int = 2
  rank: int = 64                # expert bottleneck width
  scale: float = 0.1            # expert output multiplier
  noisy_gating: bool = True     # noise needs rngs={'gating': key} to apply
  noise_epsilon: float = 1e-2
  freeze_top: int = 2           # experts frozen per block after each task
  # DIKI (official defaults).
  prompt_length: int = 8
  prompt_depth: int = 8         # the first N blocks of a tower get prompts

  def __post_init__(self):
    def bad(field, expected):
      raise ValueError(f'AdapterConfig.{field}: expected {expected}, got '
                       f'{getattr(self, field)!r}')
    if self.kind not in ('moe', 'diki'):
      bad('kind', "'moe' or 'diki'")
    for field in ('num_tasks', 'num_experts', 'top_k', 'rank',
                  'prompt_length', 'prompt_depth'):
      value = getattr(self, field)
      if not isinstance(value, (int, np.integer)) or value < 1:
        bad(field, 'a positive integer')
    if self.top_k > self.num_experts:
      bad('top_k', f'at most num_experts ({self.num_experts})')
    if not 0 <= self.freeze_top <= self.num_experts:
      bad('freeze_top', f'an integer in [0, num_experts={self.num_experts}]')
    if not self.towers or any(t not in TOWERS for t in self.towers):
      bad('towers', f'a non-empty subset of {TOWERS}')


def config_for_method(method: str, *, num_tasks: int, **overrides
                      ) -> AdapterConfig:
  """The AdapterConfig of a `config.method` name ('moe_adapters' or 'diki')."""
  if method not in METHOD_KINDS:
    raise ValueError(f'config.method: {method!r} has no adapters; expected '
                     f'one of {sorted(METHOD_KINDS)}')
  if 'towers' in overrides:
    overrides['towers'] = tuple(overrides['towers'])
  return AdapterConfig(kind=METHOD_KINDS[method], num_tasks=num_tasks,
                       **overrides)


def block_adapter(cfg: AdapterConfig | None, tower: str, layer: int
                  ) -> AdapterConfig | None:
  """The config if block `layer` of `tower` gets an adapter, else None."""
  if cfg is None or tower not in cfg.towers:
    return None
  if cfg.kind == 'diki' and layer >= cfg.prompt_depth:
    return None
  return cfg


# ------------------------------------------------------------ MoE-Adapters --


def top_k_gates(logits, k: int):
  """Top-k gating: (gates float32[B, k], expert ids int32[B, k]); the gates
  are the softmax over the k largest logits (the rest are 0)."""
  values, idx = jax.lax.top_k(logits.astype(jnp.float32), k)
  return jax.nn.softmax(values, axis=-1), idx


def _uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _param(module, name, init, axes, shape):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape)


class MoEAdapter(nn.Module):
  """Mixture of bottleneck adapters with one router per task."""
  cfg: AdapterConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, task_id, weight):
    """x: float[B, L, D] (the block's residual stream); task_id: int32[];
    weight: float32[] or [B] (0 = the adapter is off) -> float[B, L, D]."""
    c = self.cfg
    d, n_exp, r = x.shape[-1], c.num_experts, c.rank
    zeros = nn.initializers.zeros
    router = _param(self, 'router', zeros, ('adapter_task', 'embed', 'expert'),
                    (c.num_tasks, d, n_exp))
    router_noise = _param(self, 'router_noise', zeros,
                          ('adapter_task', 'embed', 'expert'),
                          (c.num_tasks, d, n_exp))
    # torch nn.Linear's kaiming_uniform(a=sqrt(5)) bound is 1/sqrt(fan_in).
    down_kernel = _param(self, 'down_kernel', _uniform(1 / math.sqrt(d)),
                         ('expert', 'embed', 'adapter_rank'), (n_exp, d, r))
    down_bias = _param(self, 'down_bias', zeros, ('expert', 'adapter_rank'),
                       (n_exp, r))
    up_kernel = _param(self, 'up_kernel', zeros,
                       ('expert', 'adapter_rank', 'embed'), (n_exp, r, d))
    up_bias = _param(self, 'up_bias', zeros, ('expert', 'embed'), (n_exp, d))
    # Buffer read by `mask_updates` (activate-freeze), not by the forward.
    _param(self, 'expert_frozen', zeros, ('expert',), (n_exp,))

    cls = x[:, 0].astype(jnp.float32)
    logits = cls @ router[task_id]
    if c.noisy_gating and self.has_rng('gating'):
      std = jax.nn.softplus(cls @ router_noise[task_id]) + c.noise_epsilon
      logits = logits + std * jax.random.normal(self.make_rng('gating'),
                                                logits.shape)
    gates, idx = top_k_gates(logits, c.top_k)
    # Selections per expert, for activate-freeze (kept only when the caller
    # makes 'intermediates' mutable).
    self.sow('intermediates', 'expert_counts', jnp.sum(
        jax.nn.one_hot(idx, n_exp, dtype=jnp.int32), axis=(0, 1)))
    return expert_mixture(x, gates, idx, down_kernel, down_bias, up_kernel,
                          up_bias, c.scale, self.dtype) * jnp.reshape(
                              weight, (-1, 1, 1)).astype(self.dtype)


def expert_mixture(x, gates, idx, down_kernel, down_bias, up_kernel, up_bias,
                   scale, dtype):
  """sum_j gates[b, j] * scale * up_e(relu(down_e(x[b]))), e = idx[b, j].

  Only the k chosen experts of each sample are computed: their weights are
  gathered per sample (the router is per sample, not per token).
  """
  dt = dtype
  h = jnp.einsum('bld,bkdr->bklr', x.astype(dt), down_kernel[idx].astype(dt))
  h = nn.relu(h + down_bias[idx].astype(dt)[:, :, None, :])
  g = gates.astype(dt)
  y = jnp.einsum('bklr,bkrd->bld', h * g[:, :, None, None],
                 up_kernel[idx].astype(dt))
  y = y + jnp.einsum('bk,bkd->bd', g, up_bias[idx].astype(dt))[:, None]
  return y * jnp.asarray(scale, dt)


def moe_residual(cfg: AdapterConfig | None, h, x, task_id, weight, dtype):
  """h + the block's MoE adapter output on x (h unchanged without one).
  Called inside a block's compact method, so the module is its child."""
  if cfg is None or cfg.kind != 'moe' or task_id is None:
    return h
  return h + MoEAdapter(cfg, dtype, name='moe_adapter')(x, task_id, weight)


# -------------------------------------------------------------------- DIKI --


class AttentionPrompt(nn.Module):
  """One block's per-task prompt keys and values (in the projected k/v
  space)."""
  cfg: AdapterConfig

  @nn.compact
  def __call__(self, width: int, task_id):
    c = self.cfg
    shape = (c.num_tasks, c.prompt_length, width)
    axes = ('adapter_task', 'prompt_length', 'qkv')
    key = _param(self, 'key', _uniform(1.0), axes, shape)
    value = _param(self, 'value', nn.initializers.zeros, axes, shape)
    return key[task_id], value[task_id]


def attention_prompt(cfg: AdapterConfig | None, width: int, task_id, weight):
  """(keys [P, D], values [P, D], weight) for `Attention`, or None. Called
  inside a block's compact method."""
  if cfg is None or cfg.kind != 'diki' or task_id is None:
    return None
  key, value = AttentionPrompt(cfg, name='prompt')(width, task_id)
  return key, value, weight


def prefix_attention(q, keys, values, weight):
  """DIKI's residual prompt branch, added to the attention output before the
  output projection.

  q: float[B, Lq, H, Dh]; keys, values: float[P, H * Dh]; weight: float32[]
  or [B]. Returns weight * softmax(q k^T / sqrt(Dh)) v over the P prompt
  positions only: float[B, Lq, H, Dh].
  """
  _, _, heads, head_dim = q.shape
  k = keys.reshape(-1, heads, head_dim).astype(q.dtype)
  v = values.reshape(-1, heads, head_dim).astype(q.dtype)
  logits = jnp.einsum('bqhd,khd->bhqk', q, k) / jnp.sqrt(
      jnp.asarray(head_dim, q.dtype))
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  out = jnp.einsum('bhqk,khd->bqhd', probs.astype(q.dtype), v)
  return out * jnp.reshape(weight, (-1, 1, 1, 1)).astype(q.dtype)


class CalibrationStats(NamedTuple):
  """A task's Gaussian over l2-normalised frozen image features."""
  mean: np.ndarray      # float32[D]
  whiten: np.ndarray    # float32[D, D]: W with W^T W = covariance^-1
  log_norm: np.ndarray  # float32[]: -(D log(2 pi) + log det covariance) / 2


def fit_calibration(features, ridge: float = 1e-7) -> CalibrationStats:
  """Fits DIKI's Gaussian to float[N, D] features (the task's training
  images through the frozen model, l2-normalised: `calibration_features`).

  Unbiased covariance plus `ridge` * I (the official 1e-7); computed in
  float64 via an eigendecomposition, so a near-singular covariance still
  gives a finite whitening matrix.
  """
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f'fit_calibration: features must be float[N, D] with '
                     f'N >= 2, got shape {f.shape}')
  if not np.isfinite(f).all():
    raise ValueError('fit_calibration: features contain NaN or inf')
  mean = f.mean(axis=0)
  delta = f - mean
  cov = delta.T @ delta / (f.shape[0] - 1) + ridge * np.eye(f.shape[1])
  eigval, eigvec = np.linalg.eigh(cov)
  if eigval.min() <= 0:
    raise ValueError(f'fit_calibration: covariance is not positive definite '
                     f'(smallest eigenvalue {eigval.min():.3g}); use ridge > 0')
  whiten = (eigvec / np.sqrt(eigval)).T
  log_norm = -0.5 * (f.shape[1] * np.log(2 * np.pi) + np.log(eigval).sum())
  return CalibrationStats(mean.astype(np.float32), whiten.astype(np.float32),
                          np.float32(log_norm))


def calibration_weight(features, mean, whiten, log_norm):
  """DIKI's w = sigmoid(log N(features; mean, cov) / D - 1), float32[B].

  features: float[B, D] l2-normalised frozen image features; the rest as in
  `CalibrationStats` (arrays, possibly traced).
  """
  f = features.astype(jnp.float32)
  z = (f - mean) @ whiten.T
  log_p = log_norm - 0.5 * jnp.sum(jnp.square(z), axis=-1)
  return jax.nn.sigmoid(log_p / f.shape[-1] - 1.0)


# ------------------------------------------------------- the model's hooks --


class AdapterState(nn.Module):
  """Buffers the adapted model reads at test time (never trained)."""
  cfg: AdapterConfig
  embed_dim: int

  @nn.compact
  def __call__(self):
    t, e = self.cfg.num_tasks, self.embed_dim
    zeros = nn.initializers.zeros
    state = {'task_trained': _param(self, 'task_trained', zeros,
                                    ('adapter_task',), (t,))}
    if self.cfg.kind == 'diki':
      state['calib_mean'] = _param(self, 'calib_mean', zeros,
                                   ('adapter_task', None), (t, e))
      state['calib_whiten'] = _param(self, 'calib_whiten', zeros,
                                     ('adapter_task', None, None), (t, e, e))
      state['calib_log_norm'] = _param(self, 'calib_log_norm', zeros,
                                       ('adapter_task',), (t,))
    return state


def _l2_normalize(x, eps=1e-6):  # = clip.l2_normalize (no circular import)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _route(clip_module, task_id):
  """(task_id, state) or (None, state) for the frozen path. At init the
  adapters must be built, so a missing id becomes task 0 with weight 0."""
  state = clip_module.adapter_state()
  if task_id is None and clip_module.is_initializing():
    return jnp.zeros((), jnp.int32), state, True
  if task_id is None:
    return None, state, False
  return jnp.asarray(task_id, jnp.int32), state, False


def _branch_weight(state, task_id, init: bool, train: bool):
  """Weight of the adapter branch: 0 while initialising, 1 in training,
  else whether the task has been trained (0 = the frozen backbone)."""
  if init:
    return jnp.zeros((), jnp.float32)
  if train:
    return jnp.ones((), jnp.float32)
  return state['task_trained'][task_id]


def encode_image(clip_module, images, task_id, train: bool):
  """`CLIP.encode_image` of a model with adapters."""
  cfg = clip_module.adapter
  task_id, state, init = _route(clip_module, task_id)
  if task_id is None or 'visual' not in cfg.towers:
    return clip_module.visual(images)
  if cfg.kind == 'diki' and not (init or train):
    frozen = _l2_normalize(clip_module.visual(images))
    weight = calibration_weight(
        frozen, state['calib_mean'][task_id], state['calib_whiten'][task_id],
        state['calib_log_norm'][task_id]) * state['task_trained'][task_id]
  else:
    weight = _branch_weight(state, task_id, init, train)
  return clip_module.visual(images, task_id, weight)


def encode_text(clip_module, tokens, task_id, train: bool):
  """`CLIP.encode_text` of a model with adapters."""
  cfg = clip_module.adapter
  task_id, state, init = _route(clip_module, task_id)
  if task_id is None or 'text' not in cfg.towers:
    return clip_module.text(tokens)
  return clip_module.text(tokens, task_id,
                          _branch_weight(state, task_id, init, train))


# ----------------------------------------------------- training utilities --


def _names(path) -> tuple[str, ...]:
  out = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
    else:
      out.append(str(k))
  return tuple(out)


def _kind(method: str) -> str:
  if method in METHOD_KINDS:
    return METHOD_KINDS[method]
  raise ValueError(f'config.method: {method!r} has no adapters; expected one '
                   f'of {sorted(METHOD_KINDS)}')


def _trainable(names: tuple[str, ...], kind: str) -> bool:
  if kind == 'moe':
    return 'moe_adapter' in names and names[-1] != 'expert_frozen'
  return 'prompt' in names and names[-1] in ('key', 'value')


def trainable_mask(params, method: str):
  """Bool pytree like params: True = trained by `method` (its adapter
  weights); the backbone, the logit scale and all buffers are False.
  (Boxed params give one bool per box.)"""
  kind = _kind(method)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _trainable(_names(path), kind), params,
      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def optimizer_labels(params, method: str):
  """'train' / 'frozen' labels for `optax.multi_transform`."""
  return jax.tree.map(lambda m: 'train' if m else 'frozen',
                      trainable_mask(params, method))


def mask_updates(updates, params, task_id):
  """Zeroes the updates that task `task_id` must not make: other tasks'
  routers and prompts, experts frozen by activate-freeze, buffers and the
  backbone. Traceable (task_id may be an int32[] tracer); works on any
  subtree of params with the same paths (None leaves are skipped)."""
  flat = {_names(p): v for p, v in
          jax.tree_util.tree_flatten_with_path(params)[0]}

  def mask(path, u):
    names = _names(path)
    kind = 'moe' if 'moe_adapter' in names else 'diki'
    if not _trainable(names, kind):
      return jnp.zeros_like(u)
    if names[-1] in _TASK_LEAVES:
      this_task = jnp.arange(u.shape[0]) == task_id
      return u * this_task.reshape((-1,) + (1,) * (u.ndim - 1)).astype(u.dtype)
    frozen = flat.get(names[:-1] + ('expert_frozen',))
    if frozen is None:
      raise ValueError(f'mask_updates: params has no {"/".join(names[:-1])}'
                       '/expert_frozen; pass the full params tree')
    return u * (1 - frozen).reshape((-1,) + (1,) * (u.ndim - 1)).astype(
        u.dtype)

  return jax.tree_util.tree_map_with_path(mask, updates)


def _set(params, path: tuple[str, ...], fn):
  """A copy of a nested-dict params tree with the leaf at `path` replaced by
  fn(leaf) (host or device arrays); a clear error when the path is missing."""
  node = params
  for key in path:
    if not hasattr(node, 'keys') or key not in node:
      raise ValueError(f'params: no leaf {"/".join(path)}; was the model built '
                       'with the matching adapter config?')
    node = node[key]

  def replace(tree, rest):
    if not rest:
      return fn(jnp.asarray(tree))
    return {**tree, rest[0]: replace(tree[rest[0]], rest[1:])}

  return replace(params, path)


def merge_backbone(params, backbone):
  """params (an adapter model's) with every leaf that `backbone` (a plain
  model's params, e.g. pretrained or loaded weights) also has taken from
  backbone; the adapter leaves stay."""
  missing = [k for k in backbone if k not in params]
  if missing:
    raise ValueError(f'merge_backbone: backbone has entries {missing} that '
                     'the adapter params lack')
  return {k: (merge_backbone(v, backbone[k]) if hasattr(v, 'keys')
              else backbone[k]) if k in backbone else v
          for k, v in params.items()}


def mark_task_trained(params, task_id: int):
  """After task `task_id`: its adapters are used at test time."""
  return _set(params, ('adapter_state', 'task_trained'),
              lambda x: x.at[task_id].set(1.0))


def calibration_features(model, params, images):
  """float32[B, D]: l2-normalised image embeddings of the frozen backbone
  (task_id=None), the features DIKI's Gaussians are fitted to. images are
  preprocessed (`tasks.preprocess`). Jittable."""
  return _l2_normalize(model.apply({'params': params}, images,
                                   method='encode_image'))


def set_calibration(params, task_id: int, stats: CalibrationStats):
  """Stores a task's fitted Gaussian (DIKI) in params."""
  for name, value in zip(('calib_mean', 'calib_whiten', 'calib_log_norm'),
                         stats):
    params = _set(params, ('adapter_state', name),
                  lambda x, v=value: x.at[task_id].set(jnp.asarray(v, x.dtype)))
  return params


def expert_counts(model, params, images, tokens, task_id) -> dict:
  """How often each expert of each MoE block is among the top-k of task
  `task_id`, over one batch of (preprocessed) images and prompt tokens, with
  the adapters on and no gating noise. Returns {path: int32[E]} with path the
  tuple of the block's `moe_adapter` (e.g. ('visual', 'block0',
  'moe_adapter')). Jittable; sum the dicts over batches."""
  _, state = model.apply({'params': params}, images, tokens, task_id=task_id,
                         train=True, mutable=['intermediates'])
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      state['intermediates'])[0]:
    names = _names(path)
    if 'expert_counts' in names:
      key = names[:names.index('expert_counts')]
      out[key] = out.get(key, 0) + leaf
  return out


def freeze_experts(params, counts: dict, top_n: int):
  """Activate-freeze: in each block, the `top_n` most selected experts (with
  a count > 0; ties to the lower index) become frozen, on top of those frozen
  before."""
  for path, c in counts.items():
    c = np.asarray(c)
    order = np.argsort(-c, kind='stable')[:top_n]
    chosen = order[c[order] > 0]
    params = _set(params, tuple(path) + ('expert_frozen',),
                  lambda x, ids=chosen: x.at[ids].set(1.0))
  return params
