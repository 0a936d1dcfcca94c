"""Evaluation during the run: each task classified among its own class
names by prompt similarity (docs/metrics.md), accuracy and macro AUC."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mgtil_jax.training.setup import Experiment
from mgtil_jax.core import logs
from mgtil_jax.core import sharding
from mgtil_jax.criteria import metrics
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.models import clip


def make_evaluator(exp: Experiment):
  """`evaluate(params, task) -> (accuracy, macro_auc, predictions)`."""
  templates = len(exp.config.prompts.templates)
  repl = sharding.replicated(exp.mesh)
  img_sh = sharding.batch_sharding(exp.mesh, exp.rules, 4)

  @functools.partial(jax.jit, out_shardings=repl)
  def class_emb(params, prompt_tokens, task_id):
    return clip.class_embeddings(exp.model, params, prompt_tokens, templates,
                                 task_id=task_id)

  @functools.partial(jax.jit, in_shardings=(None, img_sh, repl, None),
                     out_shardings=repl)
  def logits_fn(params, images, class_embeddings, task_id):
    img = clip.l2_normalize(exp.model.apply(
        {'params': params}, tasks_lib.preprocess(images), task_id=task_id,
        method=clip.CLIP.encode_image))
    return jnp.exp(params['logit_scale']) * img @ class_embeddings.T

  bs = exp.config.eval.batch_size
  n_shards = exp.mesh.shape['data'] * exp.mesh.shape['fsdp']
  bs = max(n_shards, bs // n_shards * n_shards)

  def evaluate(params, task: tasks_lib.TaskData, task_index: int = 0):
    # Adapter models route by the task id (known at test time in MGTIL).
    task_id = (jnp.asarray(task_index, jnp.int32)
               if exp.model.adapter is not None else None)
    with exp.context():
      cls = class_emb(params, exp.replicated(
          exp.prompt_tokens(task.class_names)), task_id)
      n = len(task.test_labels)
      out = []
      for start in range(0, n, bs):
        chunk = task.test_images[start:start + bs]
        pad = bs - len(chunk)
        if pad:  # fixed shapes: one compilation per task shape, not per size
          chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:],
                                                  chunk.dtype)])
        logits = logits_fn(params, exp.put_batch({'x': chunk})['x'], cls,
                           task_id)
        out.append(np.asarray(logits)[:bs - pad])
    logits = np.concatenate(out)
    preds = logits.argmax(-1)
    probs = np.asarray(jax.nn.softmax(logits, -1))
    return (metrics.accuracy(task.test_labels, preds),
            metrics.macro_auc(task.test_labels, probs), preds)

  return evaluate


def evaluate_all(exp: Experiment, evaluate, params, desc: str,
                 predictions: dict | None = None):
  """Accuracy and AUC of every task; each task's predictions go into
  `predictions` (task index -> int[N]) when it is given."""
  accs, aucs = [], []
  for t, task in enumerate(logs.progress(exp.tasks, desc=desc,
                                           leave=False)):
    acc, auc, preds = evaluate(params, task, t)
    accs.append(acc)
    aucs.append(auc)
    if predictions is not None:
      predictions[t] = preds
  return accs, aucs
