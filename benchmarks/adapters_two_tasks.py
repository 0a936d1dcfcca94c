r"""MoE-Adapters and DIKI on two tasks of the synthetic benchmark, with a
minimal loop (not train.run): does the loss go down, does task 1 leave task 0
alone?

  python benchmarks/adapters_two_tasks.py                  # CPU, a few minutes
  python benchmarks/adapters_two_tasks.py --steps=30 --pretrain_steps=200

The tiny backbone is first pretrained contrastively on the benchmark's
image-caption corpus (train.pretrain, cached under --workdir), as the embedded
config does: a random tiny text tower gives every class prompt the same
embedding, so nothing could be learnt on top of it. Then, per method, task 0
and task 1 are trained in turn (only the adapters for moe_adapters / diki,
everything for ft, the reference), with the task's end-of-task statistics,
and every task is evaluated before training and after each task.

Prints a table and writes benchmarks/results/adapters_two_tasks_<platform>.json.
"""

import argparse
import functools
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import mgtil_synth  # pylint: disable=g-import-not-at-top
from mgtil_jax.criteria import losses
from mgtil_jax import training as train
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.models import adapters, clip, presets

ORDER = 'fundus_dr+xray_lesion'  # the two hardest for the pretrained tiny model


def run_method(method, exp, backbone, args):
  cfg = exp.config
  templates = len(cfg.prompts.templates)
  tasks = exp.tasks
  prompts = [jnp.asarray(exp.prompt_tokens(t.class_names)) for t in tasks]
  if method == 'ft':
    model, params = exp.model, backbone
    tx = optax.adam(args.lr_ft)
  else:
    adapter = adapters.config_for_method(method, num_tasks=len(tasks))
    model = clip.make_model(presets.get_preset(cfg.model.preset),
                            adapter=adapter)
    params = adapters.merge_backbone(nn.unbox(jax.jit(functools.partial(
        clip.init_params, model))(jax.random.key(cfg.seed))), backbone)
    tx = optax.multi_transform(
        {'train': optax.adam(args.lr_adapter), 'frozen': optax.set_to_zero()},
        adapters.optimizer_labels(params, method))

  @jax.jit
  def step(params, opt, images, labels, prompt_tokens, task_id, key):
    def loss_fn(p):
      logits = clip.classify_logits(
          model, p, tasks_lib.preprocess(images), prompt_tokens, templates,
          task_id=task_id, train=True, rngs={'gating': key})
      return losses.classification_loss(
          logits, labels, label_smoothing=cfg.train.label_smoothing)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    if method != 'ft':
      updates = adapters.mask_updates(updates, params, task_id)
    return optax.apply_updates(params, updates), opt, loss

  @jax.jit
  def logits_fn(params, images, prompt_tokens, task_id):
    return clip.classify_logits(model, params, tasks_lib.preprocess(images),
                                prompt_tokens, templates, task_id=task_id)

  def evaluate(params):
    accs, ces, logits = [], [], []
    for j, task in enumerate(tasks):
      z = np.asarray(logits_fn(params, task.test_images, prompts[j], j))
      logp = z - z.max(-1, keepdims=True)
      logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
      ces.append(float(-logp[np.arange(len(z)), task.test_labels].mean()))
      accs.append(float((z.argmax(-1) == task.test_labels).mean()))
      logits.append(z)
    return accs, ces, logits

  result = {'acc': [], 'test_ce': [], 'train_loss': []}
  acc, ce, _ = evaluate(params)
  result['acc'].append(acc)
  result['test_ce'].append(ce)
  start = time.time()
  for t, task in enumerate(tasks):
    opt = tx.init(params)
    curve = []
    for s in range(args.steps):
      idx = tasks_lib.batch_indices(len(task.train_labels),
                                    cfg.train.batch_size, s, cfg.seed, t)
      params, opt, loss = step(params, opt, task.train_images[idx],
                               task.train_labels[idx], prompts[t],
                               jnp.int32(t), jax.random.key(1000 * t + s))
      curve.append(float(loss))
    result['train_loss'].append(curve)
    if method != 'ft':  # end of task t
      params = adapters.mark_task_trained(params, t)
      images = tasks_lib.preprocess(task.train_images[:args.stat_images])
      if method == 'diki':
        feats = jax.jit(functools.partial(adapters.calibration_features,
                                          model))(params, images)
        params = adapters.set_calibration(params, t,
                                          adapters.fit_calibration(feats))
      else:
        counts = jax.jit(functools.partial(adapters.expert_counts, model))(
            params, images, prompts[t], t)
        params = adapters.freeze_experts(params, counts,
                                         adapter.freeze_top)
    acc, ce, logits = evaluate(params)
    result['acc'].append(acc)
    result['test_ce'].append(ce)
    if t == 0:
      task0_logits = logits[0]
  result['task0_logit_change_during_task1'] = float(
      np.abs(logits[0] - task0_logits).max())
  result['seconds'] = time.time() - start
  return result


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--methods', default='moe_adapters,diki,ft')
  parser.add_argument('--steps', type=int, default=100)
  parser.add_argument('--pretrain_steps', type=int, default=600)
  parser.add_argument('--lr_adapter', type=float, default=1e-2)
  parser.add_argument('--lr_ft', type=float, default=1e-4)
  parser.add_argument('--stat_images', type=int, default=512,
                      help='training images per task for end-of-task stats')
  parser.add_argument('--workdir', default='/tmp/mgtil_adapters_two_tasks')
  args = parser.parse_args()

  config = mgtil_synth.get_config(f'order={ORDER}')
  config.pretrain.steps = args.pretrain_steps
  exp = train.setup(config, args.workdir)
  t0 = time.time()
  backbone = jax.device_get(train.pretrain(exp, None))
  pretrain_s = time.time() - t0

  results = {}
  for method in args.methods.split(','):
    results[method] = run_method(method, exp, backbone, args)

  names = [t.name for t in exp.tasks]
  print(f'\ntasks: {names}; {args.steps} steps per task, batch '
        f'{config.train.batch_size}; pretrain {args.pretrain_steps} steps')
  rows = ('zero-shot', 'after task 0', 'after task 1')
  for method, r in results.items():
    first = np.mean(r['train_loss'][0][:5])
    last = np.mean(r['train_loss'][0][-5:])
    print(f'\n{method}: task-0 train loss {first:.3f} -> {last:.3f} '
          f'(mean of first/last 5 steps); task 1 '
          f'{np.mean(r["train_loss"][1][:5]):.3f} -> '
          f'{np.mean(r["train_loss"][1][-5:]):.3f}; max |change| of task-0 '
          f'logits during task 1: {r["task0_logit_change_during_task1"]:.3g}')
    print(f'  {"":14s}' + ''.join(f'{n:>26s}' for n in names))
    for row, accs, ces in zip(rows, r['acc'], r['test_ce']):
      print(f'  {row:14s}' + ''.join(f'{"acc %.3f  CE %.3f" % (a, c):>26s}'
                                     for a, c in zip(accs, ces)))

  out_dir = os.path.join(ROOT, 'benchmarks', 'results')
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir,
                      f'adapters_two_tasks_{jax.devices()[0].platform}.json')
  with open(path, 'w') as f:
    json.dump({'tasks': names, 'args': vars(args),
               'pretrain_seconds': pretrain_s, 'rows': rows,
               'results': results}, f, indent=1)
  print(f'\nwrote {path}')


if __name__ == '__main__':
  main()
