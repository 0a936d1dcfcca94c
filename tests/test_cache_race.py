"""Shared caches (issue 25): two runs started together on one cache_dir
build each pretraining and data entry once and get identical results; an
entry left half-written by a kill is detected and rebuilt."""

import json
import os
import subprocess
import sys

import numpy as np

from mgtil_jax.data import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(tmp_path, name):
  return subprocess.Popen(
      [sys.executable, 'launch.py',
       '--config=configs/mgtil_synth.py:runlocal,tasks=2,method=ft',
       f'--workdir={tmp_path / name}',
       f'--config.cache_dir={tmp_path / "cache"}'],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_runs_on_one_cache_build_each_entry_once(tmp_path):
  procs = [_launch(tmp_path, n) for n in ('a', 'b')]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err.decode()[-3000:]
  cache = tmp_path / 'cache'
  entries = [d for d in os.listdir(cache) if d.startswith('pretrain_')
             and not d.endswith('.lock')]
  assert len(entries) == 1
  # No temporary file is left behind in the data cache.
  assert not [f for f in os.listdir(cache / 'data') if '.tmp' in f]
  results = [json.loads((tmp_path / n / 'results.json').read_text())
             for n in ('a', 'b')]
  assert results[0]['accuracy_matrix'] == results[1]['accuracy_matrix']
  assert results[0]['zero_shot'] == results[1]['zero_shot']


def test_half_written_data_entry_is_rebuilt(tmp_path, caplog):
  path = str(tmp_path / 'entry.npz')
  calls = []

  def build():
    calls.append(1)
    return {'x': np.arange(1000, dtype=np.int32)}

  first = tasks._cached(path, 'k1', build)  # pylint: disable=protected-access
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:  # a kill mid-write: the file cut short
    f.truncate(size // 2)
  again = tasks._cached(path, 'k1', build)  # pylint: disable=protected-access
  assert len(calls) == 2 and 'unreadable' in caplog.text
  np.testing.assert_array_equal(again['x'], first['x'])
  # Now whole: read back without building.
  tasks._cached(path, 'k1', build)  # pylint: disable=protected-access
  assert len(calls) == 2
