"""Bad config values fail fast with an error that names the field."""

import os

import pytest

from configs import common, mgtil_synth
from mgtil_jax import training as train
from mgtil_jax.entry import validation


def _config(**overrides):
  c = mgtil_synth.get_config('runlocal')
  for path, value in overrides.items():
    node = c
    *parents, leaf = path.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.mark.parametrize('path,value,field', [
    ('method', 'sgd_magic', 'config.method'),
    ('model.preset', 'vit_huge_unknown', 'config.model.preset'),
    ('model.dtype', 'float8', 'config.model.dtype'),
    ('train.steps_per_task', 0, 'config.train.steps_per_task'),
    ('prompts.templates', ('no placeholder',), 'config.prompts.templates'),
])
def test_bad_values_name_the_field(tmp_path, path, value, field):
  with pytest.raises(ValueError, match=field.replace('.', r'\.')):
    validation.validate(_config(**{path: value}), str(tmp_path / 'w'))


def test_mesh_that_does_not_divide_devices(tmp_path):
  # This process has one CPU device: a 2-way data axis cannot be built.
  c = _config(**{'mesh.data': 2})
  with pytest.raises(ValueError, match=r'config\.mesh'):
    train.setup(c, str(tmp_path / 'w'))


def test_batch_not_divisible_by_data_axis():
  from mgtil_jax.core import sharding

  class FakeMesh:  # the check only reads axis sizes
    shape = {'data': 2, 'fsdp': 2, 'tensor': 1}

  with pytest.raises(ValueError, match=r'config\.train\.batch_size'):
    sharding.check_batch_divisible(6, FakeMesh(), 'config.train.batch_size')
  sharding.check_batch_divisible(8, FakeMesh(), 'config.train.batch_size')


def test_missing_workdir_parent(tmp_path):
  missing = str(tmp_path / 'does' / 'not' / 'exist' / 'w')
  with pytest.raises(FileNotFoundError, match='--workdir'):
    validation.validate(_config(), missing)


def test_unknown_order_and_config_argument(tmp_path):
  with pytest.raises(ValueError, match=r'config\.data\.order'):
    train.setup(_config(**{'data.order': 'random_walk'}), str(tmp_path / 'w'))
  with pytest.raises(ValueError, match="unknown key 'stpes'"):
    mgtil_synth.get_config('stpes=10')


def test_parse_arg_types():
  a = common.parse_arg('steps=10,lr=1e-3,name=abc,runlocal', steps=1, lr=0.1,
                       name='x', runlocal=False)
  assert a.steps == 10 and isinstance(a.steps, int)
  assert a.lr == pytest.approx(1e-3)
  assert a.name == 'abc'
  assert a.runlocal is True
