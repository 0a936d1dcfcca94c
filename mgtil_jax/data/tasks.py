"""Task sequences as the trainer sees them, and the host-side batch sampler.

A benchmark is a list of `TaskData` (name, domain, class names, train and test
splits of uint8 images) plus an optional image-caption corpus. Loaders are
chosen by `config.data.name`; the embedded default is `mgtil_synth`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

import jax.numpy as jnp
import numpy as np

from mgtil_jax.core import caches
from mgtil_jax.data import synth

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TaskData:
  name: str
  domain: str
  class_names: tuple[str, ...]
  train_images: np.ndarray  # uint8[N, S, S, 3]
  train_labels: np.ndarray  # int32[N]
  test_images: np.ndarray
  test_labels: np.ndarray


def _config_key(d: dict) -> str:
  return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _cached(path: str, key: str, build):
  """Loads an npz cache whose key matches, else builds and writes it
  atomically (a crash never leaves a half-written cache), under the entry's
  lock: two runs that want it build it once (core/caches.py)."""
  with caches.cache_lock(path):
    if os.path.exists(path):
      try:
        with np.load(path, allow_pickle=False) as f:
          if str(f['_key']) == key:
            return {k: f[k] for k in f.files if k != '_key'}
      except Exception as e:  # pylint: disable=broad-except
        # Truncated or corrupt (BadZipFile, EOFError, KeyError, ValueError,
        # zlib errors, ...): it is only a cache, so build it again.
        log.warning('data cache %s is unreadable (%s: %s); rebuilding it',
                    path, type(e).__name__, e)
    arrays = build()
    tmp = caches.temporary_name(path)
    np.savez(tmp, _key=np.asarray(key), **arrays)
    os.replace(tmp, path)
    return arrays


def first_tasks(names: tuple, data_cfg) -> tuple:
  """The first `config.data.num_tasks` names of an order (0 = all)."""
  num_tasks = data_cfg.get('num_tasks', 0)
  if not isinstance(num_tasks, int) or num_tasks < 0:
    raise ValueError(f'config.data.num_tasks: expected an integer >= 0 '
                     f'(0 = all), got {num_tasks!r}')
  return names[:num_tasks] if num_tasks else names


def synth_tasks(data_cfg, cache_dir: str | None) -> list[TaskData]:
  order = data_cfg.order
  if isinstance(order, str) and order in synth.ORDERS:
    names = synth.ORDERS[order]
  elif isinstance(order, str):  # an explicit order: 'task_a+task_b+...'
    names = tuple(n for n in order.split('+') if n)
  else:
    names = tuple(order)
  names = first_tasks(names, data_cfg)
  if not names:
    raise ValueError(f'config.data.order: {order!r} names no task')
  unknown = [n for n in names if n not in synth.TASKS]
  if unknown:
    raise ValueError(f'config.data.order: unknown tasks {unknown}; expected '
                     f'one of {sorted(synth.ORDERS)} or task names joined by '
                     f"'+' from {sorted(synth.TASKS)}")
  regime_name = data_cfg.get('regime', 'same_scanner')
  regime = synth.get_regime(regime_name)
  out = []
  for name in names:
    task = synth.TASKS[name]
    spec = dict(task=name, size=data_cfg.image_size, seed=data_cfg.seed,
                train=data_cfg.train_per_class, test=data_cfg.test_per_class,
                regime=regime_name, version=synth.VERSION)

    def build(task=task):
      tr = synth.make_split(task, 'train', data_cfg.train_per_class,
                            data_cfg.image_size, data_cfg.seed, regime)
      te = synth.make_split(task, 'test', data_cfg.test_per_class,
                            data_cfg.image_size, data_cfg.seed, regime)
      return dict(train_images=tr.images, train_labels=tr.labels,
                  test_images=te.images, test_labels=te.labels)

    arrays = (_cached(os.path.join(cache_dir, f'{name}.npz'),
                      _config_key(spec), build) if cache_dir else build())
    out.append(TaskData(name, task.domain, task.class_names, **arrays))
  return out


def synth_corpus(data_cfg, per_class: int, cache_dir: str | None):
  """The synthetic 'literature' corpus: (uint8 images, captions)."""
  regime_name = data_cfg.get('regime', 'same_scanner')
  regime = synth.get_regime(regime_name)
  spec = dict(size=data_cfg.image_size, seed=data_cfg.seed,
              per_class=per_class, regime=regime_name, version=synth.VERSION)

  def build():
    c = synth.make_corpus(per_class, data_cfg.image_size, data_cfg.seed,
                          regime=regime)
    return dict(images=c.images, captions=np.asarray(c.captions),
                domains=np.asarray(c.domains))

  arrays = (_cached(os.path.join(cache_dir, 'corpus.npz'), _config_key(spec),
                    build) if cache_dir else build())
  return arrays['images'], [str(c) for c in arrays['captions']]


def batch_indices(n: int, batch_size: int, step: int, seed: int,
                  stream: int) -> np.ndarray:
  """Indices of batch `step` of an endless shuffled stream over n examples.

  Epoch e is a fresh permutation keyed by (seed, stream, e), so any batch is
  a pure function of its step: a resumed run sees exactly the batches an
  uninterrupted one would, with no iterator state to save. Small datasets are
  cycled (the ZSCL recipe).
  """
  start = step * batch_size
  out = np.empty(batch_size, np.int64)
  filled = 0
  while filled < batch_size:
    epoch, offset = divmod(start + filled, n)
    perm = np.random.default_rng([seed, stream, epoch]).permutation(n)
    take = min(batch_size - filled, n - offset)
    out[filled:filled + take] = perm[offset:offset + take]
    filled += take
  return out


def task_batch(task: TaskData, step: int, batch_size: int, seed: int,
               task_index: int) -> dict:
  """Batch `step` of task `task_index`'s training stream (batch_indices)."""
  idx = batch_indices(len(task.train_labels), batch_size, step, seed,
                      stream=task_index)
  return {'image': task.train_images[idx], 'label': task.train_labels[idx]}


# CLIP's normalisation constants (open_clip OPENAI_DATASET_MEAN/STD), which
# BiomedCLIP's preprocessing config also uses.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess(images, mean=CLIP_MEAN, std=CLIP_STD):
  """uint8[B, H, W, C] (or float in [0, 1]) -> normalised float32, in-graph."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    images = images.astype(jnp.float32) / 255.0
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) - mean) / std
