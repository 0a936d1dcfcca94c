"""single_task (mgtil_jax/methods/single_task.py): every task starts from
the initial model, so its first row equals ft's (same data, same steps) and
its second row is a model that never saw task 1; the report reads the
diagonal as the per-task bound."""

import json

import numpy as np
import pytest

from configs import mgtil_synth
from mgtil_jax import methods
from mgtil_jax import training as train


def test_each_task_starts_from_the_initial_model():
  method = methods.get_method('single_task')
  assert 'single_task' in methods.COMPARISON
  assert method.state_trees() == ('initial',)
  initial = {'w': np.zeros(3, np.float32)}
  state = {'params': {'w': np.ones(3, np.float32)}, 'initial': initial}
  state = method.begin_task(None, state, {}, 1)
  np.testing.assert_array_equal(state['params']['w'], initial['w'])
  assert state['params']['w'] is not initial['w']  # a copy, not an alias


@pytest.mark.slow  # two runlocal runs: ~1 min on an idle 2-core CPU
def test_single_task_rows_and_report(tmp_path):
  runs = {}
  for name in ('ft', 'single_task'):
    config = mgtil_synth.get_config(f'runlocal,tasks=2,steps=2,method={name}')
    config.cache_dir = str(tmp_path / 'cache')
    runs[name] = train.run(config, str(tmp_path / name))
  ft, st = runs['ft'], runs['single_task']
  a_ft, a_st = np.asarray(ft['accuracy_matrix']), np.asarray(
      st['accuracy_matrix'])
  # Task 1 trains from the same initial model on the same batches.
  np.testing.assert_allclose(a_st[0], a_ft[0], atol=1e-6)
  diag = np.diag(a_st)
  np.testing.assert_allclose(st['per_task_bound'], diag)
  assert st['summary']['last'] == st['summary']['acc']
  np.testing.assert_allclose(st['summary']['last'], diag.mean())
  assert st['summary']['transfer'] is None and st['summary']['bwt'] is None
  assert ft['per_task_bound'] is None
  with open(tmp_path / 'single_task' / 'results.md') as f:
    assert 'per-task bound' in f.read()
  # Both runs record whether each task learned (lists, maybe empty).
  with open(tmp_path / 'single_task' / 'results.json') as f:
    assert isinstance(json.load(f)['not_learned'], list)
