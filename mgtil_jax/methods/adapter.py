"""The part shared by the adapter methods (MoE-Adapters, DIKI): a frozen
backbone with per-task adapters, routed by the task id; only adapter leaves
train, at `method_kwargs.adapter_lr`; updates of other tasks' adapters and
of frozen experts are masked to zero (docs/methods.md, "Adapters")."""

from __future__ import annotations

import jax
import numpy as np

from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.methods import base
from mgtil_jax.methods.icarl import chunks
from mgtil_jax.models import adapters


class Adapters(base.Part):

  def __init__(self, method_name: str):
    self.method_name = method_name  # adapters.METHOD_KINDS key

  def adapter(self, num_tasks):
    return adapters.config_for_method(self.method_name, num_tasks=num_tasks)

  def optimizer(self, config, abstract_params):
    return {'lr': config.method_kwargs.adapter_lr,
            'labels': adapters.optimizer_labels(abstract_params,
                                                self.method_name)}

  def initial_params(self, exp, backbone, fresh):
    """A frozen backbone (the plain CLIP's initial params) + freshly
    initialised adapters (the run seed's)."""
    plain = backbone()
    return jax.device_put(adapters.merge_backbone(fresh(exp.config.seed),
                                                  plain), exp.param_shardings)

  def model_kwargs(self, ctx, prompts):
    """The current task's adapters, with MoE gating noise keyed by the
    global step (resumes see the same noise)."""
    key = jax.random.fold_in(jax.random.key(ctx.config.seed), prompts['step'])
    return dict(task_id=prompts['task_id'], train=True, rngs={'gating': key})

  def task_prompts(self, exp, meta, t):
    return {'task_id': exp.replicated(np.int32(t))}

  def step_prompts(self, exp, t, s, steps):
    return {'step': exp.replicated(np.int32(t * steps + s))}

  def transform_updates(self, ctx, updates, params, prompts):
    # Other tasks' routers/prompts and frozen experts get no update.
    return adapters.mask_updates(updates, params, prompts['task_id'])

  def end_task(self, exp, state, meta, t, prompts):
    state['params'] = self.task_end_params(exp, state['params'], t,
                                           prompts['task'])
    return state

  def task_end_params(self, exp, params, t, prompts):
    """Marks task t trained; subclasses add their own task-end fit."""
    del prompts
    return adapters.mark_task_trained(params, t)


def task_images(exp, t):
  return chunks(exp.tasks[t].train_images, exp.config.eval.batch_size)


def preprocess(images):
  return tasks_lib.preprocess(images)
