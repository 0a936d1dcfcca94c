"""iCaRL, Rebuffi et al. 2017 (docs/methods.md, Eq. iCaRL): herding
exemplars per class at each task end; every later step replays a batch of
them (CE over the union of the earlier tasks' classes, each row masked to
its own task) plus KD of the teacher's logits on it. Classification is by
CLIP prompts instead of the nearest mean of exemplars."""

from __future__ import annotations

import jax
import numpy as np

from mgtil_jax.criteria import losses
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.methods import base, registry
from mgtil_jax.models import clip


def memory_prompts(exp, task_index: int):
  """The prompts of every class of tasks before `task_index`, and for each
  of those tasks its slice of them."""
  names, spans = [], []
  for task in exp.tasks[:task_index]:
    spans.append((len(names), len(names) + len(task.class_names)))
    names.extend(task.class_names)
  return exp.prompt_tokens(names), spans


def memory_batch(exp, exemplars: dict, task_index: int, step: int,
                 spans) -> dict:
  """A batch of stored exemplars of earlier tasks, labels into the union of
  their classes, each row masked to its own task's classes."""
  pool = [(t, int(i)) for t in range(task_index)
          for i in exemplars[str(t)]]
  size = exp.config.train.batch_size
  idx = tasks_lib.batch_indices(len(pool), size, step, exp.config.seed,
                                stream=30_000 + task_index)
  num_classes = spans[-1][1]
  images, labels = [], np.zeros(size, np.int32)
  mask = np.zeros((size, num_classes), bool)
  for row, k in enumerate(idx):
    t, i = pool[k]
    lo, hi = spans[t]
    images.append(exp.tasks[t].train_images[i])
    labels[row] = lo + exp.tasks[t].train_labels[i]
    mask[row, lo:hi] = True
  return {'mem_image': np.stack(images), 'mem_label': labels,
          'mem_mask': mask}


def chunks(array, size: int):
  """Consecutive slices of at most `size` rows."""
  return (array[s:s + size] for s in range(0, len(array), size))


def herding(features: np.ndarray, m: int) -> list[int]:
  """iCaRL's herding: greedily picks m rows whose running mean stays closest
  to the mean of all rows (features L2-normalised)."""
  f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True),
                            1e-12)
  mu = f.mean(0)
  chosen, total = [], np.zeros_like(mu)
  for k in range(min(m, len(f))):
    gaps = np.linalg.norm(mu - (total + f) / (k + 1), axis=1)
    gaps[chosen] = np.inf
    i = int(np.argmin(gaps))
    chosen.append(i)
    total += f[i]
  return chosen


def select_exemplars(exp, params, task) -> list[int]:
  """Herding per class on the image features of the model after the task."""
  # Replicated out: on several processes a batch-sharded output spans
  # devices this host cannot read.
  encode = jax.jit(lambda p, x: exp.model.apply(
      {'params': p}, tasks_lib.preprocess(x), method=clip.CLIP.encode_image),
                   out_shardings=exp.replicated_sharding)
  feats = []
  with exp.context():
    for images in chunks(task.train_images, exp.config.eval.batch_size):
      feats.append(np.asarray(encode(params, images)))
  feats = np.concatenate(feats)
  out = []
  per_class = exp.config.method_kwargs.exemplars_per_class
  for c in range(len(task.class_names)):
    members = np.flatnonzero(task.train_labels == c)
    out.extend(members[herding(feats[members], per_class)].tolist())
  return out


class Exemplars(base.Part):
  """Exemplar memory: replay CE + KD on it (terms 'replay', 'replay_kd')."""
  uses_teacher = True

  def __init__(self):
    self._spans = None

  def task_terms(self, ctx, logits, params, state, batch, prompts, teacher):
    del logits, state
    if 'mem_image' not in batch:
      return {}
    kw = ctx.kw
    mem = base.masked_logits(ctx.logits(params, batch['mem_image'],
                                        prompts['memory']), batch['mem_mask'])
    mem_teacher = base.masked_logits(ctx.logits(
        teacher, batch['mem_image'], prompts['memory']), batch['mem_mask'])
    return {
        'replay': losses.classification_loss(
            mem, batch['mem_label'], mask=batch['mem_mask'],
            label_smoothing=ctx.config.train.label_smoothing),
        'replay_kd': kw.icarl_kd_weight * losses.distillation_kl(
            mem, mem_teacher, temperature=kw.lwf_temperature)}

  def task_prompts(self, exp, meta, t):
    self._spans = None
    if t == 0:
      return {}
    tokens, self._spans = memory_prompts(exp, t)
    return {'memory': exp.replicated(tokens)}

  def extra_batch(self, exp, meta, t, s):
    if self._spans is None:
      return {}
    return exp.put_batch(memory_batch(exp, meta['exemplars'], t, s,
                                      self._spans))

  def end_task(self, exp, state, meta, t, prompts):
    meta.setdefault('exemplars', {})[str(t)] = select_exemplars(
        exp, state['params'], exp.tasks[t])
    return state


@registry.register('icarl', paper='iCaRL, Rebuffi et al. 2017: herding '
                   'exemplars, replay + KD (classification by CLIP prompts '
                   'instead of nearest mean)')
def build(kw):
  del kw
  return base.Method('icarl', [Exemplars()])
