r"""Does the pretrained start already separate each task? For every task of a
config it prints the start's zero-shot accuracy (class prompts), the image
tower's own nearest-centroid accuracy (training-image class means, cosine;
no text) and the majority-class rate.

  python benchmarks/start_features.py --config=configs/mgtil_synth.py
  python benchmarks/start_features.py --config=configs/mgtil_synth.py \
      --set=pretrain.steps=2000

A start whose centroid accuracy is near the majority rate has no features
for the task: fine-tuning must build them, and the next task rebuilds them
(benchmarks/RESULTS.md section 1). BiomedCLIP's features on MGTIL's datasets
are the other case, weak prompts over features that already separate the
classes. Prints a table and writes JSON (--out).
"""

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))  # configs/ imports its siblings as `configs.*`

import learning_probe as probe  # pylint: disable=g-import-not-at-top
from mgtil_jax import training as train
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.models import clip


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', required=True)
  p.add_argument('--set', action='append', default=[],
                 help='config field=value (repeatable)')
  p.add_argument('--cache_dir', default='/tmp/mgtil_learning_probe')
  p.add_argument('--out', default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), 'results',
      'start_features.json'))
  args = p.parse_args()
  t0 = time.time()
  cfg = probe.load_config(args.config)
  cfg.method = 'zeroshot'
  cfg.cache_dir = args.cache_dir
  cfg.data.pipeline = 'stateless'
  for assignment in args.set:
    probe.set_field(cfg, assignment)
  os.makedirs(args.cache_dir, exist_ok=True)
  exp = train.setup(cfg, os.path.join(args.cache_dir, 'workdir_start'))
  params = train.initial_params(exp, None)
  evaluate = train.make_evaluator(exp)

  @jax.jit
  def embed(p, x):
    return clip.l2_normalize(exp.model.apply(
        {'params': p}, tasks_lib.preprocess(x), method=clip.CLIP.encode_image))

  rows = []
  print('| task | zero-shot | centroid | majority |')
  print('|---|---|---|---|')
  for i, task in enumerate(exp.tasks):
    acc, _, _ = evaluate(params, task, i)
    n = len(task.class_names)
    train_emb = np.asarray(jax.device_get(embed(params,
                                                task.train_images[:1024])))
    test_emb = np.asarray(jax.device_get(embed(params,
                                               task.test_images[:512])))
    pred = probe.nearest_centroid(train_emb,
                                  np.asarray(task.train_labels[:1024]),
                                  test_emb, n)
    centroid = float(np.mean(pred == np.asarray(task.test_labels[:512])))
    majority = float(np.bincount(task.test_labels).max()
                     / len(task.test_labels))
    rows.append(dict(task=task.name, zero_shot=float(acc),
                     centroid_accuracy=centroid, majority_rate=majority))
    print(f'| {task.name} | {100 * acc:.1f} | {100 * centroid:.1f} | '
          f'{100 * majority:.1f} |', flush=True)
  mean = {k: float(np.mean([r[k] for r in rows]))
          for k in ('zero_shot', 'centroid_accuracy', 'majority_rate')}
  print(f"| mean | {100 * mean['zero_shot']:.1f} | "
        f"{100 * mean['centroid_accuracy']:.1f} | "
        f"{100 * mean['majority_rate']:.1f} |")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(dict(config=args.config, sets=args.set, rows=rows, mean=mean,
                   seconds=time.time() - t0), f, indent=1)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
