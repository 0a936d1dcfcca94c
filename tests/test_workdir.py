"""Workdir lock and config fingerprint (mgtil_jax/training/workdir.py)."""

import json
import os

import ml_collections
import pytest

from mgtil_jax.training import workdir
from mgtil_jax.core.errors import UserError


def _config(**train):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.train = dict(dict(lr=1e-4, steps_per_task=4, log_every=2), **train)
  c.checkpoint = dict(every_steps=2, keep=2)
  return c


def _progress(path):
  os.makedirs(path / 'checkpoints' / '4')


def test_fingerprint_refuses_result_changing_fields(tmp_path):
  workdir.check_fingerprint(_config(), str(tmp_path))
  assert json.loads((tmp_path / 'config.json').read_text())['train.lr'] == 1e-4
  _progress(tmp_path)
  with pytest.raises(UserError) as info:
    workdir.check_fingerprint(_config(lr=1e-3, steps_per_task=8),
                              str(tmp_path))
  message = str(info.value)
  assert 'train.lr 0.0001 -> 0.001' in message
  assert 'train.steps_per_task 4 -> 8' in message
  assert 'new --workdir' in message and '\n' not in message


def test_fingerprint_allows_operational_fields(tmp_path):
  workdir.check_fingerprint(_config(), str(tmp_path))
  _progress(tmp_path)
  c = _config(log_every=1)
  c.checkpoint.every_steps = 1
  workdir.check_fingerprint(c, str(tmp_path))  # no error


def test_fingerprint_of_a_workdir_without_progress_follows_the_config(
    tmp_path):
  # A run that failed before its first checkpoint can be fixed and re-run.
  workdir.check_fingerprint(_config(), str(tmp_path))
  workdir.check_fingerprint(_config(lr=3e-4), str(tmp_path))
  assert json.loads((tmp_path / 'config.json').read_text())['train.lr'] == 3e-4


def test_lock_is_reentrant_in_a_process_and_released(tmp_path):
  with workdir.lock(str(tmp_path)):
    with workdir.lock(str(tmp_path)):
      owner = json.loads((tmp_path / '.lock').read_text())
      assert owner['pid'] == os.getpid() and owner['host']
  assert not workdir._held  # pylint: disable=protected-access
