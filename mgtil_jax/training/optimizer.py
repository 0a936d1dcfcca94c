"""The task and pretraining optimiser (AdamW, warm-up + cosine, the logit
scale optionally frozen) and the shardings of the train state."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import optax

from mgtil_jax.training.setup import Experiment
from mgtil_jax.core import errors
from mgtil_jax.core import sharding
from mgtil_jax.models import clip


def make_optimizer(*, lr: float, steps: int, warmup_steps: int,
                   weight_decay: float, freeze_logit_scale: bool,
                   labels=None):
  """AdamW with linear warm-up then cosine decay to 0 over `steps`; the logit
  scale optionally frozen (the recipe of docs/methods.md)."""
  warmup_steps = min(warmup_steps, max(steps - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup_steps, max(steps, warmup_steps + 1), end_value=0.0)
  adamw = optax.adamw(schedule, weight_decay=weight_decay)
  if labels is not None:  # adapter methods: 'train' / 'frozen' per leaf
    return optax.multi_transform({'train': adamw,
                                  'frozen': optax.set_to_zero()}, labels)
  if not freeze_logit_scale:
    return adamw
  # A label prefix tree (not a function) so optax.tree_map_params can map
  # shardings over the state.
  labels = {'visual': 'train', 'text': 'train', 'logit_scale': 'frozen'}
  return optax.multi_transform({'train': adamw, 'frozen': optax.set_to_zero()},
                               labels)


def frozen_prefixes(spec: str) -> tuple[str, ...]:
  """config.train.frozen ('visual/patch_embed,visual/block0') -> prefixes."""
  return tuple(p.strip().strip('/') for p in (spec or '').split(',')
               if p.strip().strip('/'))


def _leaf_name(path) -> str:
  """A parameter's path as config.train.frozen writes it: 'visual/block0'."""
  return '/'.join(str(getattr(k, 'key', k)) for k in path)


def _under(name: str, prefix: str) -> bool:
  """Whether `prefix` is `name` or a whole-component prefix of it."""
  return name == prefix or name.startswith(prefix + '/')


def freeze_labels(abstract_params, prefixes, labels=None, *,
                  freeze_logit_scale: bool = True):
  """A full 'train' / 'frozen' label tree: `labels` (a method's own, else
  all 'train'), with every leaf whose '/'-joined path starts with one of
  `prefixes` (whole path components) frozen, and the logit scale frozen
  when asked. The same leaves are frozen for every method (docs/methods.md,
  "Frozen layers")."""
  if labels is None:
    labels = jax.tree.map(lambda _: 'train', abstract_params)
  def label(path, own):
    name = _leaf_name(path)
    if freeze_logit_scale and name == 'logit_scale':
      return 'frozen'
    if any(_under(name, p) for p in prefixes):
      return 'frozen'
    return own
  return jax.tree_util.tree_map_with_path(label, labels)


def unmatched_prefixes(abstract_params, prefixes) -> list[str]:
  """The prefixes of config.train.frozen that name no parameter."""
  names = [_leaf_name(path) for path, _ in
           jax.tree_util.tree_flatten_with_path(abstract_params)[0]]
  return [p for p in prefixes if not any(_under(n, p) for n in names)]


def build_optimizer(exp: Experiment, steps: int):
  """The task optimiser: AdamW at config.train.lr, or the method's own lr
  and trainable-leaf labels (adapters); the leaves under config.train.frozen
  are frozen for every method alike."""
  cfg = exp.config
  abstract = nn.unbox(jax.eval_shape(
      functools.partial(clip.init_params, exp.model), jax.random.key(0)))
  own = exp.method.optimizer(cfg, abstract) or {}
  labels = own.get('labels')
  prefixes = frozen_prefixes(cfg.train.get('frozen', ''))
  if prefixes:
    missing = unmatched_prefixes(abstract, prefixes)
    if missing:
      raise errors.UserError(
          f'config.train.frozen: {missing[0]!r} names no parameter of the '
          f'model (expected /-joined paths such as visual/block0 or '
          f'visual/patch_embed)')
    labels = freeze_labels(abstract, prefixes, labels,
                           freeze_logit_scale=cfg.train.freeze_logit_scale)
  return make_optimizer(lr=own.get('lr', cfg.train.lr), steps=steps,
                        warmup_steps=cfg.train.warmup_steps,
                        weight_decay=cfg.train.weight_decay,
                        freeze_logit_scale=cfg.train.freeze_logit_scale,
                        labels=labels)


def state_shardings(exp: Experiment, tx, trees=()):
  """Shardings of `{'params', 'opt', *trees}`: optimiser moments follow
  their params; counts and other scalars are replicated; every extra tree
  (anchor, initial, fisher, ensemble) is sharded like the params."""
  abstract_params = nn.unbox(jax.eval_shape(
      functools.partial(clip.init_params, exp.model), jax.random.key(0)))
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt = sharding.shardings_like_params(abstract_opt, abstract_params,
                                       exp.param_shardings, exp.mesh)
  out = {'params': exp.param_shardings, 'opt': opt}
  for name in trees:
    out[name] = exp.param_shardings
  return out


def _fresh_state(exp: Experiment, tx, trees=()):
  """A state of the right structure (used under eval_shape as a restore
  target)."""
  params = nn.unbox(clip.init_params(exp.model, jax.random.key(0)))
  state = {'params': params, 'opt': tx.init(params)}
  for name in trees:
    state[name] = params
  return state
