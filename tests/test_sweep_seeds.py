"""`--sweep` with `--seeds` (issue 23.4: each ablation over >= 3 seeds):
every value runs once per seed in --compare's layout, its row is the mean
over those runs, its difference against the first value is paired by seed,
and a second call reuses the finished runs. The reference values are NumPy
means over the runs' own results.json files."""

import json
import os

import numpy as np
import pytest

from configs import mgtil_synth
from mgtil_jax.entry import sweep


def _results(path):
  with open(path) as f:
    return json.load(f)


@pytest.mark.slow  # four runlocal runs, ~2.5 min on 2 busy cores
def test_sweep_over_seeds_pairs_each_value_with_the_first(tmp_path):
  config = mgtil_synth.get_config('runlocal,tasks=2,method=ft')
  config.cache_dir = str(tmp_path / 'cache')
  workdir = str(tmp_path / 'sweep')
  table = sweep.sweep(config, workdir, 'train.lr=1e-4,3e-3', seeds=2)

  seeds = [int(config.seed), int(config.seed) + 1]
  runs = {name: [_results(os.path.join(workdir, name, f'seed_{s}', 'ft',
                                       'results.json')) for s in seeds]
          for name in ('lr=0.0001', 'lr=0.003')}
  assert [r['config']['seed'] for r in runs['lr=0.003']] == seeds
  assert runs['lr=0.003'][0]['config']['train']['lr'] == 3e-3
  rows = table['methods']
  assert list(rows) == ['lr=0.0001', 'lr=0.003']
  for name, results in runs.items():
    assert rows[name]['n_seeds'] == 2
    np.testing.assert_allclose(
        rows[name]['summary']['last'],
        np.mean([r['summary']['last'] for r in results]), rtol=1e-9)
  # Paired by seed: the mean difference of Last is the difference of the
  # two values' mean Last (Last = the mean of the final row's tasks).
  last = {n: np.mean([np.mean(r['accuracy_matrix'][-1]) for r in rs])
          for n, rs in runs.items()}
  diff = rows['lr=0.003']['diff']['lr=0.0001']['last']
  np.testing.assert_allclose(diff['mean'], last['lr=0.003'] - last['lr=0.0001'],
                             atol=1e-9)
  assert 'diff' not in rows['lr=0.0001'] or not rows['lr=0.0001']['diff']
  text = open(os.path.join(workdir, 'sweep.md')).read()
  assert 'Paired difference vs lr=0.0001' in text and '| lr=0.003 |' in text

  # A second call runs nothing: every results.json is reused as it is.
  stamps = {p: os.path.getmtime(p) for p in _all_results(workdir)}
  again = sweep.sweep(config, workdir, 'train.lr=1e-4,3e-3', seeds=2)
  assert {p: os.path.getmtime(p) for p in _all_results(workdir)} == stamps
  assert again['methods']['lr=0.003']['summary'] == rows['lr=0.003']['summary']


def _all_results(workdir):
  return sorted(os.path.join(d, f) for d, _, files in os.walk(workdir)
                for f in files if f == 'results.json')
