"""The continual run, as the paper's algorithm: set up, start or resume,
for each task train then evaluate, report.

The train state is a plain dict pytree `{'params', 'opt'[, 'anchor']}`; each
step is one jitted pure function with explicit in/out shardings over the mesh
of `config.mesh`, with the logical -> mesh rules of `config.sharding_rules`
(training/steps.py). `run(config, workdir)` is the whole experiment; the
entry points validate the config first (entry/validation.py)."""

from __future__ import annotations

import logging
import os
import time

import jax

from mgtil_jax.core import hosts
from mgtil_jax.core import logs
from mgtil_jax.criteria import learned
from mgtil_jax import reporting
from mgtil_jax.training import checkpoint as ckpt_lib
from mgtil_jax.training import results as results_lib
from mgtil_jax.training import steps as steps_lib
from mgtil_jax.training import workdir as workdir_lib
from mgtil_jax.training.batches import TaskBatches, _TaskStream
from mgtil_jax.training.evaluation import evaluate_all, make_evaluator
from mgtil_jax.training.optimizer import _fresh_state, build_optimizer, state_shardings
from mgtil_jax.training.pretraining import initial_params, initial_trees
from mgtil_jax.training.setup import _sync, setup

log = logging.getLogger(__name__)

@workdir_lib.guarded  # issue 13: validate, lock, fingerprint, finish saves
def run(config, workdir: str) -> dict:
  """Runs (or resumes) the whole continual experiment; returns the results.

  Init or restore, then for each phase (a task, or one phase over
  all tasks): the method's task-begin actions, the steps, its task-end
  actions, evaluation, a checkpoint. Everything a method does is a hook of
  `exp.method` (docs/methods.md)."""
  wall_start = time.time()
  exp = setup(config, workdir)
  workdir = exp.workdir  # absolute: orbax requires absolute paths
  cfg, method = exp.config, exp.method
  num_phases, steps = method.phases(len(exp.tasks), cfg.train.steps_per_task)
  evaluate = make_evaluator(exp)
  tx = build_optimizer(exp, steps)
  shardings_ = state_shardings(exp, tx, exp.state_trees)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                               keep=cfg.checkpoint.keep)
  opt_init = jax.jit(tx.init, out_shardings=shardings_['opt'])
  # The checkpoints are read before the summary writer opens its events
  # file: a re-run refused for unreadable ones leaves the workdir alone.
  restored = _restore(exp, tx, shardings_, ckpt)
  writer = logs.summary_writer(workdir) if hosts.is_lead() else None
  try:
    state, meta = restored or _init(exp, ckpt, evaluate, writer, opt_init)
    prior = meta['elapsed']
    elapsed = lambda: prior + time.time() - wall_start

    step_fn = (steps_lib.make_task_step(exp, tx, shardings_)
               if method.trains else None)
    for t in range(meta['task'], num_phases):
      if method.trains:
        state = train_phase(exp, state, meta, t, steps, step_fn, opt_init,
                            ckpt, writer, elapsed, num_phases)
      if method.trains or t == 0:
        preds = {}
        acc, auc = evaluate_all(exp, evaluate, state['params'],
                                f'eval after task {t + 1}', preds)
        if method.trains:  # the tasks this phase trained: did they learn?
          trained = [t] if num_phases == len(exp.tasks) else range(len(preds))
          meta.setdefault('not_learned', []).extend(
              learned.check_phase(exp.tasks, trained, preds))
      else:  # no training: the model never changes, every row is the same
        acc, auc = list(meta['zero_shot']), list(meta['zero_shot_auc'])
      meta['acc_rows'].append(acc)
      meta['auc_rows'].append(auc)
      logs.scalars(writer, f'eval/after_{t + 1}', dict(
          zip([x.name for x in exp.tasks], acc)), (t + 1) * steps)
      meta.update(task=t + 1, step=0, elapsed=elapsed())
      ckpt.save((t + 1) * steps, state, meta)
    ckpt.close()

    results = results_lib.build_results(exp, meta, wall_time=elapsed())
    if hosts.is_lead():
      reporting.write_run(workdir, results)
      print(reporting.format_table(results))
      print(reporting.final_summary(results, workdir))
  except BaseException:
    _abandon(writer)
    raise
  if writer is not None:
    writer.close()
  _sync('done')
  return results


def _abandon(writer):
  """Closes the summary writer of a failed run, so that its last scalars are
  written before the error line rather than by its exit hook after it; on a
  full disk they are lost."""
  if writer is not None:
    try:
      writer.close()
    except OSError as e:
      log.debug('summary writer not closed: %s', e)


def _restore(exp, tx, shardings_, ckpt):
  """(state, record) of the latest readable checkpoint, or None."""
  latest = ckpt.latest_step()
  if latest is None:
    return None
  abstract = jax.eval_shape(lambda: _fresh_state(exp, tx, exp.state_trees))
  state, meta = ckpt.restore(latest, ckpt_lib.abstract_like(abstract,
                                                           shardings_))
  # A corrupt latest checkpoint falls back to an earlier one: log its own
  # task and step.
  log.info('resumed at task %d, step %d', meta['task'], meta['step'])
  return state, meta


def _init(exp, ckpt, evaluate, writer, opt_init):
  """A fresh state (initial params, zero-shot rows, the method's trees) and
  record, saved as step 0."""
  params = initial_params(exp, writer)
  zs_acc, zs_auc = evaluate_all(exp, evaluate, params, 'zero-shot eval')
  meta = {'task': 0, 'step': 0, 'zero_shot': zs_acc, 'zero_shot_auc': zs_auc,
          'acc_rows': [], 'auc_rows': [], 'train_curves': [],
          'elapsed': 0.0, 'reference': []}
  state = {'params': params, 'opt': opt_init(params),
           **initial_trees(exp, params)}
  logs.scalars(writer, 'zero_shot', dict(zip(
      [t.name for t in exp.tasks], zs_acc)), 0)
  ckpt.save(0, state, meta)
  return state, meta


def _log_point(curve: dict, s: int, m: dict):
  """Appends step s's loss, every loss term and every gradient share."""
  curve['loss'].append([s, float(m['loss'])])
  for k, v in m.items():
    if k.startswith('grad_share/'):
      curve['grad_share'].setdefault(k.split('/', 1)[1], []).append(
          [s, float(v)])
    elif k not in ('loss', 'grad_norm', 'train_accuracy'):
      curve['terms'].setdefault(k, []).append([s, float(v)])


def train_phase(exp, state, meta, t, steps, step_fn, opt_init, ckpt, writer,
                elapsed, num_phases):
  """Trains phase t from meta['step'] to `steps`, then the method's
  task-end actions; the record `meta` carries everything a resume needs."""
  cfg, method = exp.config, exp.method
  task, start = exp.tasks[t], meta['step']
  # One phase over every task (multi-task training) is named for all.
  name = task.name if num_phases == len(exp.tasks) else 'all_tasks'
  if start == 0:  # a task starts: fresh optimiser, the method's resets
    state['opt'] = opt_init(state['params'])
    state = method.begin_task(exp, state, meta, t)
  method.open_task(exp, state, meta, t, start)  # (re)builds reference sets
  own = exp.task_prompts(task)
  method_prompts = method.task_prompts(exp, meta, t)
  prompts = {**own, **method_prompts}  # the phase task's, for end_task
  stream = method.stream(exp, t, start, meta) or _TaskStream(
      TaskBatches(exp, task, t, start, meta.get('pipeline')))
  bar = logs.progress(range(start, steps), initial=start, total=steps,
                        desc=f'task {t + 1}/{num_phases} {name}')
  # The curves so far survive a mid-task resume through `meta`.
  curve = meta.get('partial_curve') if start else None
  curve = curve or {'loss': [], 'terms': {}, 'grad_share': {}}
  meta['partial_curve'] = curve
  with exp.context():
    for s in bar:
      batch, phase_prompts = next(stream)
      batch = dict(batch, **method.extra_batch(exp, meta, t, s))
      # A stream's own prompts (joint: this step's task) replace the
      # phase task's whole set, class weights included.
      step_prompts = {**(own if phase_prompts is None else phase_prompts),
                      **method_prompts,
                      **method.step_prompts(exp, t, s, steps)}
      state, m = step_fn(state, batch, step_prompts)
      state = method.after_step(exp, state, meta, t, s, steps)
      if (s + 1) % cfg.train.log_every == 0 or s + 1 == steps:
        m = jax.device_get(m)
        # A NaN loss stops the run, naming the step (the last good
        # checkpoint stays).
        ckpt_lib.check_finite(m, f'task {t + 1} ({name}) step {s + 1}')
        bar.set_postfix(loss=f"{m['loss']:.3f}",
                        acc=f"{m['train_accuracy']:.2f}")
        logs.scalars(writer, f'train/{name}', m, t * steps + s + 1)
        _log_point(curve, s + 1, m)
      if (s + 1) % cfg.checkpoint.every_steps == 0 and s + 1 < steps:
        meta.update(step=s + 1, elapsed=elapsed(), pipeline=stream.get_state())
        ckpt.save(t * steps + s + 1, state, meta)
  stream.close()
  method.close_task()
  meta.pop('pipeline', None)
  state = method.end_task(exp, state, meta, t, prompts)
  curve = meta.pop('partial_curve')
  meta['train_curves'].append({'task': name, **curve})
  return state
