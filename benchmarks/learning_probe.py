r"""Why does a task not learn? Fine-tunes one task alone from the initial
model (ft's step) and prints, at a few points, what decides whether it
learns: test accuracy, the share of the most predicted class, the mean and
largest cosine between the task's class-prompt embeddings, the mean cosine
between image embeddings, and the Fisher ratio of the image embeddings
(between-class over within-class scatter). At the end it prints the
confusion matrix, every pair's class-prompt cosine and the image tower's own
accuracy (nearest class centroid of the training embeddings): a task whose
centroid accuracy is no better than its prompt accuracy is held back by its
image features, not by its class prompts.

  python benchmarks/learning_probe.py --config=configs/mgtil_synth.py:regime=mgtil \
      --task=0 --steps=200 --cache_dir=/tmp/probe_cache
  python benchmarks/learning_probe.py --config=configs/real_mini.py --task=0 \
      --steps=400 --set=train.class_balance=pneumoniamnist
  python benchmarks/learning_probe.py ... --logit_scale=100   # task training only

A task whose class prompts embed alike (cosine -> 1) and whose image
embeddings collapse together (image cosine -> 1, Fisher ratio falling) has
taken the shortcut to the class prior (benchmarks/RESULTS.md, "Why fine-tuning
did not learn the shifted tasks"). Prints a table and writes JSON (--out, default
benchmarks/results/learning_probe.json).
"""

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))  # configs/ imports its siblings as `configs.*`

from mgtil_jax import training as train  # pylint: disable=g-import-not-at-top
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.models import clip


def load_config(spec: str):
  """`path.py[:arg]` -> the ConfigDict of its get_config(arg)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('probe_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def set_field(cfg, assignment: str):
  key, _, value = assignment.partition('=')
  *parents, leaf = key.split('.')
  node = cfg
  for p in parents:
    node = node[p]
  old = node[leaf]
  if isinstance(old, bool):
    node[leaf] = value.lower() in ('1', 'true', 'yes')
  else:
    node[leaf] = type(old)(value)


def embedding_stats(class_emb, image_emb, labels) -> dict:
  """Cosines and Fisher ratio, in NumPy from the normalised embeddings."""
  c = len(class_emb)
  cc = class_emb @ class_emb.T
  off = cc[~np.eye(c, dtype=bool)]
  means = np.stack([image_emb[labels == k].mean(0) for k in range(c)
                    if np.any(labels == k)])
  within = np.mean([((image_emb[labels == k] - image_emb[labels == k].mean(0))
                     ** 2).sum(1).mean() for k in range(c)
                    if np.any(labels == k)])
  between = ((means - means.mean(0)) ** 2).sum(1).mean()
  return dict(class_cos_mean=float(off.mean()), class_cos_max=float(off.max()),
              image_cos_mean=float((image_emb @ image_emb.T).mean()),
              fisher=float(between / max(within, 1e-12)))


def nearest_centroid(train_emb, train_labels, test_emb, num_classes):
  """Accuracy of the image tower alone: each test embedding to the nearest
  class mean of the training embeddings (cosine), no text involved."""
  means = np.stack([train_emb[train_labels == k].mean(0)
                    for k in range(num_classes)])
  means /= np.linalg.norm(means, axis=1, keepdims=True)
  return np.argmax(test_emb @ means.T, 1)


def diagnose(params, embed, evaluate, task, index, num_classes) -> dict:
  """Where the errors come from at the end: the confusion matrix, every
  pair's class-prompt cosine, and the image tower's own accuracy (nearest
  class centroid): a task whose centroid accuracy is far above its prompt
  accuracy is held back by its class prompts, not by its image features."""
  _, _, preds = evaluate(params, task, index)
  labels = np.asarray(task.test_labels)[:len(preds)]
  confusion = np.zeros((num_classes, num_classes), int)
  np.add.at(confusion, (labels, np.asarray(preds)), 1)
  cls, test_emb = jax.device_get(embed(params, task.test_images[:512]))
  _, train_emb = jax.device_get(embed(params, task.train_images[:1024]))
  centroid = nearest_centroid(np.asarray(train_emb),
                              np.asarray(task.train_labels[:1024]),
                              np.asarray(test_emb), num_classes)
  centroid_acc = float(np.mean(centroid == task.test_labels[:512]))
  cos = np.asarray(cls) @ np.asarray(cls).T
  print(f'confusion (rows true, columns predicted; {task.class_names}):')
  print(confusion)
  print('class-prompt cosines:')
  print(np.round(cos, 4))
  print(f'nearest-centroid accuracy of the image embeddings: '
        f'{100 * centroid_acc:.1f}%')
  return dict(confusion=confusion.tolist(), class_cos=cos.tolist(),
              centroid_accuracy=centroid_acc)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', required=True)
  p.add_argument('--task', type=int, default=0, help='index in the order')
  p.add_argument('--steps', type=int, default=200)
  p.add_argument('--points', type=int, default=4, help='rows printed')
  p.add_argument('--set', action='append', default=[],
                 help='config field=value (repeatable)')
  p.add_argument('--logit_scale', type=float, default=0.0,
                 help='fix exp(logit_scale) for the task training (0 = keep)')
  p.add_argument('--then', default='',
                 help='comma-separated task indices trained next (ft, as '
                 'the continual run would); rows then follow --task while '
                 'they train: how it is forgotten')
  p.add_argument('--cache_dir', default='/tmp/mgtil_learning_probe')
  p.add_argument('--out', default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), 'results',
      'learning_probe.json'))
  args = p.parse_args()

  cfg = load_config(args.config)
  cfg.method = 'ft'
  cfg.cache_dir = args.cache_dir
  cfg.train.steps_per_task = args.steps
  cfg.train.warmup_steps = max(1, args.steps // 10)
  cfg.data.pipeline = 'stateless'
  for assignment in args.set:
    set_field(cfg, assignment)
  os.makedirs(args.cache_dir, exist_ok=True)
  exp = train.setup(cfg, os.path.join(args.cache_dir, 'workdir'))
  params = train.initial_params(exp, None)
  if args.logit_scale:
    params = dict(params, logit_scale=np.float32(np.log(args.logit_scale)))
  tx = train.build_optimizer(exp, args.steps)
  state = {'params': params, 'opt': jax.jit(tx.init)(params)}
  step = train.make_task_step(exp, tx, train.state_shardings(exp, tx))
  evaluate = train.make_evaluator(exp)
  task = exp.tasks[args.task]
  prompts = exp.task_prompts(task)
  batches = train.TaskBatches(exp, task, args.task, 0)
  templates = len(cfg.prompts.templates)
  images = task.test_images[:512]
  labels = task.test_labels[:512]

  @jax.jit
  def embed(p, x):
    cls = clip.class_embeddings(exp.model, p, prompts['task'], templates)
    img = clip.l2_normalize(exp.model.apply(
        {'params': p}, tasks_lib.preprocess(x), method=clip.CLIP.encode_image))
    return cls, img

  rows = []

  def record(s, m=None, stage=None):
    acc, _, preds = evaluate(state['params'], task, args.task)
    cls, img = jax.device_get(embed(state['params'], images))
    _, train_img = jax.device_get(embed(state['params'],
                                        task.train_images[:1024]))
    centroid = nearest_centroid(np.asarray(train_img),
                                np.asarray(task.train_labels[:1024]),
                                np.asarray(img), len(task.class_names))
    row = dict(step=s, stage=stage or task.name, accuracy=float(acc),
               top_class_share=float(np.bincount(preds).max() / len(preds)),
               centroid_accuracy=float(np.mean(centroid == labels)),
               logit_scale=float(np.exp(state['params']['logit_scale'])),
               **embedding_stats(np.asarray(cls), np.asarray(img), labels))
    if m is not None:
      row.update(loss=float(m['loss']), train_accuracy=float(
          m['train_accuracy']))
    rows.append(row)
    print(f"| {row['stage']} | {s} | {100 * acc:.1f} | "
          f"{row['top_class_share']:.2f} | "
          f"{100 * row['centroid_accuracy']:.1f} | "
          f"{row['class_cos_mean']:.3f} / {row['class_cos_max']:.4f} | "
          f"{row['image_cos_mean']:.3f} | {row['fisher']:.3f} | "
          f"{row['logit_scale']:.1f} | "
          f"{row.get('loss', float('nan')):.3f} |", flush=True)

  majority = np.bincount(task.test_labels).max() / len(task.test_labels)
  print(f'{task.name}: {len(task.train_labels)} training examples, '
        f'majority-class rate {100 * majority:.1f}%')
  print('| training | step | test acc | top class share | centroid acc | '
        'class-prompt cos mean / max | image cos | Fisher ratio | '
        'logit scale | loss |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  t0 = time.time()
  record(0)
  every = max(1, args.steps // args.points)
  for s in range(args.steps):
    state, m = step(state, next(batches), prompts)
    if (s + 1) % every == 0 or s + 1 == args.steps:
      record(s + 1, jax.device_get(m))
  final = diagnose(state['params'], embed, evaluate, task, args.task,
                   len(task.class_names))
  for later in [int(t) for t in args.then.split(',') if t]:
    # The next task as ft's continual run trains it: a fresh optimizer
    # (each task's schedule restarts), its own prompts and batches, while the
    # rows keep measuring --task.
    state = {'params': state['params'], 'opt': jax.jit(tx.init)(
        state['params'])}
    other = exp.tasks[later]
    other_prompts = exp.task_prompts(other)
    other_batches = train.TaskBatches(exp, other, later, 0)
    for s in range(args.steps):
      state, m = step(state, next(other_batches), other_prompts)
      if (s + 1) % every == 0 or s + 1 == args.steps:
        record(s + 1, jax.device_get(m), stage=other.name)
  if args.then:
    final['after'] = diagnose(state['params'], embed, evaluate, task,
                              args.task, len(task.class_names))
  out = dict(config=args.config, task=task.name, steps=args.steps,
             sets=args.set, logit_scale=args.logit_scale, then=args.then,
             majority_rate=float(majority), rows=rows, final=final,
             seconds=time.time() - t0)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(out, f, indent=1)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
