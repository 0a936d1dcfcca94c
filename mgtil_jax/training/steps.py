"""Jitted train steps: one generic continual step for every method, and the
contrastive pretraining step.

The continual step knows no method. It asks `exp.method` (docs/methods.md,
"Hooks") for:

  loss groups   each a pure function of (params, state, batch, prompts,
                teacher) returning weighted loss terms; one value_and_grad
                per group (the task batch and the reference batch are
                different batches anyway), gradients summed;
  grad terms    terms whose weights come from a group's gradient or
                that need no forward pass (quadratic pulls): (value, gradient)
                pairs, each `jax.value_and_grad` of a `losses` function;
  update masks  applied to the optimiser's updates (adapters).

Metrics: every term's value, `loss` (their sum), `grad_norm`, and for each
group / grad term `grad_share/<name>` = its gradient norm over the sum of all
of them, so a run shows which term moves the weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mgtil_jax.criteria import losses
from mgtil_jax.methods import base as methods_base

# Kept here for callers of steps.pair_logits (pretraining, benchmarks).
pair_logits = methods_base.pair_logits
teacher_params = methods_base.teacher_params


def _split(out):
  """A loss group returns {term: value} or ({term: value}, aux metrics)."""
  return out if isinstance(out, tuple) else (out, {})


def make_task_step(exp, tx, state_shardings_):
  """Jitted `step(state, batch, prompts) -> (state, metrics)`.

  batch: {'image', 'label'} plus what the method's parts add (reference
  pairs `ref_image` / `ref_tokens`, exemplars `mem_*`, ...).
  prompts: {'task': int32[C * n_templates, L], ...} (a bare array is taken
  as the task prompts). Batches arrive placed (exp.put_batch), so their
  shardings are taken as given; the state's are explicit.
  """
  method = exp.method
  ctx = methods_base.StepContext(exp.model, exp.config, method)
  groups = method.loss_groups(ctx)

  def step(state, batch, prompts):
    if not isinstance(prompts, dict):  # a bare task prompt array
      prompts = {'task': prompts}
    params = state['params']
    teacher = method.teacher(state)
    metrics, group_grads, norms = {}, {}, {}
    loss, grads = 0.0, None
    for name, fn in groups.items():
      def total(p, fn=fn):
        terms, aux = _split(fn(p, state, batch, prompts, teacher))
        return sum(terms.values()), (terms, aux)
      (value, (terms, aux)), g = jax.value_and_grad(total, has_aux=True)(
          params)
      metrics.update(terms)
      metrics.update(aux)
      group_grads[name] = g
      loss = loss + value
      grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
      norms[name] = optax.tree.norm(g)
    for name, (value, g) in method.grad_terms(ctx, params, state,
                                              group_grads).items():
      metrics[name] = value
      loss = loss + value
      grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
      norms[name] = optax.tree.norm(g)
    norm_sum = sum(norms.values()) + 1e-30
    for name, n in norms.items():
      metrics[f'grad_share/{name}'] = n / norm_sum
    updates, opt = tx.update(grads, state['opt'], params)
    updates = method.transform_updates(ctx, updates, params, prompts)
    new_state = dict(state, params=optax.apply_updates(params, updates),
                     opt=opt)
    return new_state, dict(metrics, loss=loss,
                           grad_norm=optax.tree.norm(grads))

  repl = exp.replicated_sharding
  return jax.jit(step, in_shardings=(state_shardings_, None, None),
                 out_shardings=(state_shardings_, repl), donate_argnums=(0,))


def make_pretrain_step(exp, tx, state_shardings_):
  """Jitted CLIP contrastive step on (image, caption tokens) batches."""

  def loss_fn(params, batch):
    return losses.clip_contrastive_loss(pair_logits(
        exp.model, params, batch['image'], batch['tokens']))

  def step(state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state['params'], batch)
    updates, opt = tx.update(grads, state['opt'], state['params'])
    return (dict(state, params=optax.apply_updates(state['params'], updates),
                 opt=opt),
            {'loss': loss, 'logit_scale': state['params']['logit_scale']})

  return jax.jit(step, in_shardings=(state_shardings_, None),
                 out_shardings=(state_shardings_, exp.replicated_sharding),
                 donate_argnums=(0,))
