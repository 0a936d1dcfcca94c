r"""Does each loss term act? Per task: the mean over logged steps of every
term / CE and of each gradient share, from results.json files (a run, or
every run under a --sweep / --compare workdir).

  python launch.py --config configs/mgtil_synth.py:runlocal,tasks=3,method=primed \
      --config.train.steps_per_task=16 --config.train.log_every=1 \
      --workdir /tmp/dfg --sweep=method_kwargs.dfg_normalize=none,mean,max
  python benchmarks/dfg_share.py /tmp/dfg [out.json]

Prints a table and writes benchmarks/results/dfg_share.json.
"""

import glob
import json
import os
import sys

import numpy as np


def shares(results: dict) -> list[dict]:
  out = []
  for curve in results['train_curves']:
    terms = {k: np.asarray(v, np.float64)[:, 1]
             for k, v in curve.get('terms', {}).items()}
    ce = terms.get('ce')
    row = {'task': curve['task']}
    for k, v in terms.items():
      if k != 'ce' and ce is not None:
        row[f'{k}/ce'] = float(np.mean(v / ce))
    for k, v in curve.get('grad_share', {}).items():
      row[f'grad_share/{k}'] = float(np.mean(np.asarray(v)[:, 1]))
    out.append(row)
  return out


def main():
  root = sys.argv[1]
  files = sorted(glob.glob(os.path.join(root, '**', 'results.json'),
                           recursive=True))
  table = {}
  for f in files:
    with open(f) as fh:
      res = json.load(fh)
    name = os.path.relpath(os.path.dirname(f), root) or res['method']
    table[name] = {'rows': shares(res), 'summary': res['summary']}
  for name, entry in table.items():
    print(f'\n{name}: Last {100 * entry["summary"]["last"]:.1f}')
    keys = sorted({k for r in entry['rows'] for k in r if k != 'task'})
    print('| task | ' + ' | '.join(keys) + ' |')
    print('|---' * (len(keys) + 1) + '|')
    for r in entry['rows']:
      print(f"| {r['task']} | " + ' | '.join(
          f'{r[k]:.3g}' if k in r else '-' for k in keys) + ' |')
  out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
      os.path.dirname(os.path.abspath(__file__)), 'results', 'dfg_share.json')
  with open(out, 'w') as f:
    json.dump(table, f, indent=1)


if __name__ == '__main__':
  main()
