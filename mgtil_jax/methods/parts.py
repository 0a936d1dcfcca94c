"""Parts shared by several methods (docs/methods.md, "Parts"): teacher KD on
the task batch, quadratic pulls, reference-batch distillation, the Dynamic
Fisher Weight Guard, weight ensembling / interpolation, joint training.

Every loss value is a function of `mgtil_jax.criteria.losses`; a part only decides
which batch and which weights it is evaluated on.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from mgtil_jax.criteria import losses
from mgtil_jax.data import reference
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.methods import base

REFERENCES = ('corpus', 'retrieval_dyn', 'retrieval_uni')
DFG_NORMALIZE = ('none', 'mean', 'max')


# ------------------------------------------------------- task-batch terms --


class LwF(base.Part):
  """LwF, Li & Hoiem 2017: KD of the teacher's class logits on the task
  batch (docs/methods.md, Eq. LwF)."""
  uses_teacher = True

  def task_terms(self, ctx, logits, params, state, batch, prompts, teacher):
    del params, state
    kw = ctx.kw
    teacher_logits = ctx.logits(teacher, batch['image'], prompts['task'])
    return {'lwf': kw.lwf_weight * losses.distillation_kl(
        logits, teacher_logits, temperature=kw.lwf_temperature)}


# ------------------------------------------------------------------ pulls --


class Pull(base.Part):
  """l2 (weights = 1) or EWC (weights = the Fisher tree) towards the params
  before this task: `reg` = scale * losses.weighted_l2 (Eq. L2 / EWC)."""

  def __init__(self, kind: str):
    self.kind = kind

  def state_trees(self, kw):
    return ('anchor', 'fisher') if self.kind == 'ewc' else ('anchor',)

  def grad_terms(self, ctx, params, state, group_grads):
    del group_grads
    kw = ctx.kw
    fisher = state['fisher'] if self.kind == 'ewc' else None
    scale = kw.ewc_weight if self.kind == 'ewc' else kw.l2_weight
    anchor = jax.lax.stop_gradient(state['anchor'])
    return {'reg': jax.value_and_grad(
        lambda p: scale * losses.weighted_l2(p, anchor, fisher))(params)}


# --------------------------------------------------- reference batches --


def make_reference_source(exp, kind: str, batch_size: int):
  """The reference-batch source: the retrieval memory ('retrieval_dyn' =
  Dynamic Siphon, 'retrieval_uni' = proportional keywords), or a fixed
  random subset of the benchmark's corpus ('corpus', ZSCL) of PRIMED_uni's
  size."""
  if kind.startswith('retrieval'):
    from mgtil_jax import retrieval  # pylint: disable=g-import-not-at-top
    # The method picks the mode on a copy: the run's recorded config keeps
    # what the user gave, so --compare can re-read a finished run.
    config = exp.config.copy_and_resolve_references()
    config.retrieval.mode = kind.split('_')[1]
    return retrieval.build_reference_source(
        dataclasses.replace(exp, config=config), batch_size)
  if exp.config.retrieval.corpus.sources:  # corpus=: a subset of it
    from mgtil_jax import retrieval  # pylint: disable=g-import-not-at-top
    return retrieval.corpus_reference_set(exp, batch_size)
  if exp.config.data.name != 'mgtil_synth':
    raise ValueError(f"config.method_kwargs.reference: 'corpus' needs an "
                     f'image-caption corpus; benchmark '
                     f'{exp.config.data.name!r} has none built in (use '
                     'retrieval_uni with config.retrieval.corpus.sources)')
  images, captions = tasks_lib.synth_corpus(
      exp.config.data, exp.config.pretrain.corpus_per_class,
      os.path.join(exp.cache_dir, 'data'))
  # The same size as PRIMED_uni's reference set, so distillation methods
  # compete on equal footing; a fixed seed makes the subset identical across
  # methods.
  pick = np.random.default_rng([exp.config.seed, 7]).permutation(
      len(captions))[:exp.config.retrieval.reference_size]
  return reference.FixedReferenceSet(
      images[pick], exp.tokenizer([captions[i] for i in pick]),
      batch_size, exp.config.seed)


class ReferenceBatches(base.Part):
  """Feeds `ref_image` / `ref_tokens` beside every task batch, from a
  source (see reference.py) prepared at each task start with the teacher,
  prefetched on a host thread."""

  def __init__(self, kind: str, make_source=None):
    self.kind = kind
    self._make_source = make_source or (
        lambda exp: make_reference_source(exp, kind,
                                          exp.config.method_kwargs
                                          .reference_batch_size))
    self.source = None
    self._batches = None

  def open_task(self, exp, state, meta, t, start):
    from mgtil_jax.retrieval.sampler import prefetch  # pylint: disable=g-import-not-at-top
    if self.source is None:
      self.source = self._make_source(exp)
    teacher = exp.config.method_kwargs.get('teacher', 'previous') or 'previous'
    stats = self.source.prepare(t, base.teacher_params(state, teacher))
    if start == 0:
      meta.setdefault('reference', []).append(stats)
    self._batches = prefetch(self.source, t,
                             range(start, exp.config.train.steps_per_task),
                             exp.put_batch)

  def extra_batch(self, exp, meta, t, s):
    ref = next(self._batches)
    return {'ref_image': ref['image'], 'ref_tokens': ref['tokens']}

  def close_task(self):
    if self._batches is not None:
      self._batches.close()
      self._batches = None


class ReferenceDistill(base.Part):
  """Distillation on the reference batch (docs/methods.md, Eqs. CKT, CMC):
  group 'distill' = alpha * CKT(student, teacher) [+ beta * CMC(student)]."""
  uses_teacher = True

  def __init__(self, *, cmc: bool):
    self.cmc = cmc

  def loss_groups(self, ctx):
    kw, model = ctx.kw, ctx.model
    direction = kw.get('granularity', 'both')

    def distill(params, state, batch, prompts, teacher):
      del state, prompts
      teacher_logits = jax.lax.stop_gradient(base.pair_logits(
          model, teacher, batch['ref_image'], batch['ref_tokens']))
      student = base.pair_logits(model, params, batch['ref_image'],
                                 batch['ref_tokens'])
      terms = {'ckt': kw.alpha * losses.cross_modal_kd(
          student, teacher_logits, temperature=kw.kd_temperature,
          direction=direction)}
      if self.cmc:
        terms['cmc'] = kw.beta * losses.cross_modal_contrastive(
            student, direction=direction)
      return terms

    return {'distill': distill}


class DFG(base.Part):
  """The Dynamic Fisher Weight Guard (docs/methods.md, Eq. DFG): weights =
  the squared gradient of the `group` terms at this step (normalised per
  tensor by `method_kwargs.dfg_normalize`), a constant; the term and its
  gradient are `jax.value_and_grad` of `losses.dynamic_fisher_guard`."""

  def __init__(self, group: str = 'distill'):
    self.group = group

  def state_trees(self, kw):
    return ('anchor',)

  def grad_terms(self, ctx, params, state, group_grads):
    kw = ctx.kw
    fisher_grads = jax.lax.stop_gradient(group_grads[self.group])
    anchor = jax.lax.stop_gradient(state['anchor'])
    normalize = kw.get('dfg_normalize', 'mean')
    return {'dfg': jax.value_and_grad(
        lambda p: kw.dfg_weight * losses.dynamic_fisher_guard(
            p, anchor, fisher_grads, normalize=normalize))(params)}


# ------------------------------------------------------ weight averaging --


@functools.partial(jax.jit, donate_argnums=(0,))
def running_mean(mean, params, count):
  """(mean * count + params) / (count + 1), leafwise."""
  return jax.tree.map(lambda m, p: (m * count + p) / (count + 1), mean,
                      params)


@jax.jit
def interpolate(before, after, alpha):
  """(1 - alpha) * before + alpha * after, leafwise (WiSE-FT)."""
  return jax.tree.map(lambda b, a: (1 - alpha) * b + alpha * a, before, after)


class WeightEnsemble(base.Part):
  """ZSCL's weight ensembling: a running mean of the params every
  `we_every` steps; the task's result is the ensemble."""

  def state_trees(self, kw):
    return ('ensemble',)

  def begin_task(self, exp, state, meta, t):
    state['ensemble'] = base.copy_tree(state['params'])
    meta['ensemble_count'] = 1
    return state

  def after_step(self, exp, state, meta, t, s, steps):
    if (s + 1) % exp.config.method_kwargs.we_every == 0 and s + 1 < steps:
      state['ensemble'] = running_mean(state['ensemble'], state['params'],
                                       meta['ensemble_count'])
      meta['ensemble_count'] += 1
    return state

  def end_task(self, exp, state, meta, t, prompts):
    state['ensemble'] = running_mean(state['ensemble'], state['params'],
                                     meta['ensemble_count'])
    state['params'] = base.copy_tree(state['ensemble'])
    return state


class Interpolate(base.Part):
  """WiSE-FT: after each task, params = (1 - a) anchor + a params."""

  def state_trees(self, kw):
    return ('anchor',)

  def end_task(self, exp, state, meta, t, prompts):
    state['params'] = interpolate(state['anchor'], state['params'],
                                  exp.config.method_kwargs.wise_alpha)
    return state


# ------------------------------------------------------------------ joint --


class JointStream:
  """All tasks at once: step s trains on task s % T with its own prompts
  (the stateless sampler, so a resume needs no iterator state)."""

  def __init__(self, exp, start: int):
    self._exp, self._step = exp, start
    self._prompts = [exp.task_prompts(x) for x in exp.tasks]

  def __next__(self):
    exp, s = self._exp, self._step
    self._step += 1
    t = s % len(exp.tasks)
    batch = exp.put_batch(tasks_lib.task_batch(
        exp.tasks[t], s // len(exp.tasks), exp.config.train.batch_size,
        exp.config.seed, t))
    return batch, self._prompts[t]

  def get_state(self):
    return None

  def close(self):
    pass


class Joint(base.Part):
  """One phase of T x steps over every task in turn (the upper bound)."""

  def phases(self, num_tasks, steps):
    return 1, steps * num_tasks

  def stream(self, exp, t, start, meta):
    return JointStream(exp, start)


def check_choice(field: str, value, choices):
  if value not in choices:
    raise ValueError(f'config.method_kwargs.{field}: expected one of '
                     f'{tuple(choices)}, got {value!r}')
  return value


def weight_ensemble(kw, default: str) -> list:
  """[WeightEnsemble()] or [] by method_kwargs.weight_ensemble ('' = the
  method's `default`, 'on' / 'off')."""
  on = check_choice('weight_ensemble', kw.get('weight_ensemble', '') or
                    default, ('on', 'off')) == 'on'
  return [WeightEnsemble()] if on else []


def reference_kind(kw, default: str) -> str:
  return check_choice('reference', kw.get('reference', '') or default,
                      REFERENCES)


def zeros_like_tree(params):
  return jax.tree.map(jnp.zeros_like, params)
