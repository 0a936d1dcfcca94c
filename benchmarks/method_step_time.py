r"""Step time of the continual methods at equal batch sizes: PRIMED vs ZSCL
vs FT (issue goal: PRIMED / ZSCL <= 1.10).

  python benchmarks/method_step_time.py                 # tiny preset, CPU
  python benchmarks/method_step_time.py --preset=vit_b16_pubmedbert --batch=2 --ref_batch=2

Every method runs the real jitted step of the trainer (`steps.make_task_step`)
on the same task batch; PRIMED and ZSCL also get the same reference batch
(`--ref_batch` pairs). Steps of the methods are interleaved round-robin and
the median per method is reported, so on a shared CPU all methods see the
same load; ratios measured in one run are the numbers to read. Prints a table
and writes benchmarks/results/method_step_time_<platform>.json.
"""

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_time  # pylint: disable=g-import-not-at-top
from mgtil_jax.training import steps
from mgtil_jax import training as train
from mgtil_jax.data import tasks as tasks_lib


def build(method, preset, batch, ref_batch, dtype):
  exp, tx, shardings, state = step_time.fresh_method_state(
      method, preset, batch, dtype)
  task = exp.tasks[0]
  host = tasks_lib.task_batch(task, 0, batch, 0, 0)
  rng = np.random.default_rng(0)
  s = exp.model.cfg.vision.image_size
  if exp.method.distill:
    host['ref_image'] = rng.integers(0, 256, (ref_batch, s, s, 3), np.uint8)
    host['ref_tokens'] = exp.tokenizer(['a fundus photograph of drusen'] *
                                       ref_batch)
  prompts = {'task': exp.replicated(exp.prompt_tokens(task.class_names))}
  step = steps.make_task_step(exp, tx, shardings)
  with exp.context():
    placed = exp.put_batch(host)
    state, m = step(state, placed, prompts)  # compile
    jax.block_until_ready(m)
  return exp, step, state, placed, prompts


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--preset', default='tiny')
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--ref_batch', type=int, default=32)
  ap.add_argument('--dtype', default='float32')
  ap.add_argument('--steps', type=int, default=20)
  ap.add_argument('--methods', default='ft,zscl,primed')
  ap.add_argument('--out', default='')
  args = ap.parse_args()
  names = args.methods.split(',')
  runs = {n: list(build(n, args.preset, args.batch, args.ref_batch,
                        args.dtype)) for n in names}
  times = {n: [] for n in names}
  for _ in range(args.steps):
    for n in names:
      exp, step, state, placed, prompts = runs[n]
      with exp.context():
        t = time.perf_counter()
        state, m = step(state, placed, prompts)
        jax.block_until_ready((state, m))
        times[n].append(time.perf_counter() - t)
      runs[n][2] = state
  med = {n: float(np.median(v)) for n, v in times.items()}
  base = med.get('zscl', med[names[0]])
  print(f"\n{args.preset} {args.dtype} batch {args.batch} + reference "
        f"{args.ref_batch}, {jax.devices()[0].device_kind}, median of "
        f"{args.steps} interleaved steps\n")
  print('| method | ms/step | / ZSCL | / FT |\n|---|---|---|---|')
  for n in names:
    print(f'| {n} | {1e3 * med[n]:.1f} | {med[n] / base:.3f} | '
          f"{med[n] / med.get('ft', med[names[0]]):.3f} |")
  dev = jax.devices()[0]
  out = args.out or os.path.join(ROOT, 'benchmarks', 'results',
                                 f'method_step_time_{dev.platform}.json')
  with open(out, 'w') as f:
    json.dump({'device': dev.device_kind, 'args': vars(args),
               'median_s': med, 'all_s': times,
               'primed_over_zscl': med.get('primed', np.nan) / base}, f,
              indent=1)
  print(f'\nwrote {out}')


if __name__ == '__main__':
  main()
