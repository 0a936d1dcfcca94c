"""benchmarks/ablation.py: the over-seeds table of an ablation, checked
against NumPy on hand-made results.json files (two variants, three seeds)."""

import json
import os
import sys

import numpy as np

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'benchmarks')
sys.path.insert(0, BENCH)
import ablation  # pylint: disable=g-import-not-at-top,wrong-import-position


def _write(path, seed, acc):
  acc = np.asarray(acc)
  os.makedirs(path)
  summary = {'transfer': 0.0, 'avg': float(acc.mean()),
             'last': float(acc[-1].mean()), 'bwt': 0.0}
  steps = [[0, 1.0], [5, 0.5]]
  with open(os.path.join(path, 'results.json'), 'w') as f:
    json.dump({'config': {'seed': seed}, 'summary': summary,
               'accuracy_matrix': acc.tolist(),
               'train_curves': [{'task': 'a', 'terms': {
                   'ce': steps, 'dfg': [[0, 0.01], [5, 0.01]]},
                   'grad_share': {'dfg': [[0, 0.2], [5, 0.4]]}}]}, f)


def test_means_and_paired_difference_match_numpy(tmp_path, capsys):
  rng = np.random.default_rng(0)
  last = {}
  for name in ('ref', 'other'):
    last[name] = []
    for seed in (1, 2, 3):
      acc = rng.uniform(0.2, 0.9, (2, 2))
      _write(tmp_path / f'seed_{seed}' / name, seed, acc)
      last[name].append(100 * acc[-1])
  out = tmp_path / 'table.json'
  ablation.main([f'ref={tmp_path}/seed_*/ref',
                  f'other={tmp_path}/seed_*/other', f'--out={out}'])
  capsys.readouterr()
  with open(out) as f:
    table = json.load(f)['variants']
  ref, other = np.array(last['ref']), np.array(last['other'])
  np.testing.assert_allclose(table['ref']['metrics']['last']['mean'],
                             ref.mean(), rtol=1e-9)
  np.testing.assert_allclose(table['other']['diff']['last']['mean'],
                             (other - ref).mean(), rtol=1e-9)
  assert table['ref']['diff'] == {}  # the reference has no difference row
  # dfg / ce over the logged steps (0.01 / 1, 0.01 / 0.5), shares 0.2, 0.4
  np.testing.assert_allclose(table['ref']['terms']['dfg/ce'], 0.015)
  np.testing.assert_allclose(table['ref']['terms']['grad_share/dfg'], 0.3)
