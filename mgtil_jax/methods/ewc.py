"""EWC, Kirkpatrick et al. 2017 (docs/methods.md, Eq. EWC): the empirical
Fisher diagonal of the task loss, computed once per task at its end and
summed over tasks (online EWC); `reg` pulls towards the previous weights
with it."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mgtil_jax.criteria import losses
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.methods import base, parts, registry


def make_fisher_fn(exp):
  """Jitted `fisher(params, batch, prompts) -> (dCE/dtheta)^2` for one batch
  (EWC's empirical Fisher diagonal; the caller averages over batches)."""
  ctx = base.StepContext(exp.model, exp.config, exp.method)

  def fisher(params, batch, prompts):
    def ce(p):
      return losses.classification_loss(
          ctx.logits(p, batch['image'], prompts['task']), batch['label'])
    return jax.tree.map(jnp.square, jax.grad(ce)(params))

  return jax.jit(fisher, out_shardings=exp.param_shardings)


def task_fisher(exp, params, task, task_index: int, prompts):
  """Mean over `ewc_batches` batches of the squared CE gradient."""
  fisher_fn = make_fisher_fn(exp)
  n = exp.config.method_kwargs.ewc_batches
  total = None
  with exp.context():
    for b in range(n):
      batch = exp.put_batch(tasks_lib.task_batch(
          task, 10_000 + b, exp.config.train.batch_size, exp.config.seed,
          task_index))
      f = fisher_fn(params, batch, {'task': prompts})
      total = f if total is None else jax.tree.map(jnp.add, total, f)
  return jax.tree.map(lambda x: x / n, total)


class TaskFisher(base.Part):
  """Keeps `fisher` (zeros at the start) += the finished task's Fisher."""

  def state_trees(self, kw):
    return ('fisher',)

  def init_tree(self, name, params):
    return parts.zeros_like_tree(params) if name == 'fisher' else None

  def end_task(self, exp, state, meta, t, prompts):
    fisher = task_fisher(exp, state['params'], exp.tasks[t], t,
                         prompts['task'])
    state['fisher'] = jax.tree.map(jnp.add, state['fisher'], fisher)
    return state


@registry.register('ewc', paper='EWC, Kirkpatrick et al. 2017: Fisher of the '
                   'task loss, computed once per task (online sum over tasks)')
def build(kw):
  del kw
  return base.Method('ewc', [parts.Pull('ewc'), TaskFisher()])
