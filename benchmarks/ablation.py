r"""An ablation over seeds: runs of two or more variants (one results.json
per seed each, e.g. from `launch.py --sweep` once per `--config.seed`, or a
`--compare --seeds` workdir), tabulated as mean ± 95% t-interval over seeds
(mgtil_jax.core.stats.describe), with the paired difference of every variant
against the first one (two-way bootstrap over seeds x tasks,
mgtil_jax.core.stats.paired_bootstrap), and each variant's loss-term shares
(benchmarks/dfg_share.py) averaged over tasks and seeds.

  python benchmarks/ablation.py dfg='/tmp/cmp/seed_*/primed' \
      none='/tmp/abl/seed_*/regularizer=none' [--out=out.json]

The first variant is the reference of the paired differences. Prints a
Markdown table and writes benchmarks/results/ablation.json (or --out).
"""

import glob
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dfg_share  # pylint: disable=g-import-not-at-top
from mgtil_jax.core import stats  # pylint: disable=g-import-not-at-top

METRICS = ('transfer', 'avg', 'last', 'bwt')


def load(pattern: str) -> dict[int, dict]:
  """{seed: results.json} of the run folders matching `pattern`."""
  out = {}
  for d in sorted(glob.glob(pattern)):
    path = os.path.join(d, 'results.json')
    if os.path.exists(path):
      with open(path) as f:
        res = json.load(f)
      out[int(res['config']['seed'])] = res
  return out


def term_shares(per_seed: dict[int, dict]) -> dict:
  """Mean over seeds and tasks of each term / CE and gradient share."""
  rows = [r for res in per_seed.values() for r in dfg_share.shares(res)]
  keys = sorted({k for r in rows for k in r if k != 'task'})
  return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


def main(argv):
  out_path = os.path.join(ROOT, 'benchmarks', 'results', 'ablation.json')
  variants = {}
  for a in argv:
    if a.startswith('--out='):
      out_path = a.split('=', 1)[1]
      continue
    name, sep, pattern = a.partition('=')
    if not sep:
      raise SystemExit(f'ablation.py: expected NAME=GLOB, got {a!r}')
    variants[name] = load(pattern)
    if not variants[name]:
      raise SystemExit(f'ablation.py: no results.json under {pattern!r}')
  ref_name = next(iter(variants))
  ref = variants[ref_name]
  table = {}
  for name, per_seed in variants.items():
    row = {'seeds': sorted(per_seed), 'metrics': {}, 'diff': {},
           'terms': term_shares(per_seed)}
    for k in METRICS:
      row['metrics'][k] = stats.describe(
          [100 * r['summary'][k] for r in per_seed.values()])
    seeds = [s for s in per_seed if s in ref]
    if name != ref_name and seeds:
      a = [stats.per_task(per_seed[s]['accuracy_matrix']) for s in seeds]
      b = [stats.per_task(ref[s]['accuracy_matrix']) for s in seeds]
      for k in METRICS:
        d = stats.paired_bootstrap([100 * x[k] for x in a],
                                   [100 * x[k] for x in b])
        row['diff'][k] = d
    table[name] = row

  def cell(d):
    if d['mean'] is None:
      return '-'
    if d['ci'] is None:
      return f"{d['mean']:.1f}"
    return f"{d['mean']:.1f} ± {(d['ci'][1] - d['ci'][0]) / 2:.1f}"

  print('| variant | seeds | ' + ' | '.join(METRICS) + ' |')
  print('|---' * (len(METRICS) + 2) + '|')
  for name, row in table.items():
    print(f"| {name} | {len(row['seeds'])} | "
          + ' | '.join(cell(row['metrics'][k]) for k in METRICS) + ' |')
  print(f'\nPaired difference against {ref_name} (mean [95% bootstrap '
        'interval over seeds x tasks]):')
  print('| variant | ' + ' | '.join(METRICS) + ' |')
  print('|---' * (len(METRICS) + 1) + '|')
  for name, row in table.items():
    if row['diff']:
      print(f'| {name} - {ref_name} | ' + ' | '.join(
          f"{d['mean']:+.1f} [{d['ci'][0]:+.1f}, {d['ci'][1]:+.1f}]"
          if d['mean'] is not None else '-'
          for d in (row['diff'][k] for k in METRICS)) + ' |')
  print('\nLoss terms (mean over tasks and seeds):')
  for name, row in table.items():
    print(f'{name}: ' + ', '.join(f'{k} {v:.3g}'
                                  for k, v in row['terms'].items()))
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  with open(out_path, 'w') as f:
    json.dump({'reference': ref_name, 'variants': table}, f, indent=1)
  print(f'wrote {out_path}')


if __name__ == '__main__':
  main(sys.argv[1:])
