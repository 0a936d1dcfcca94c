"""A corrupt prepared dataset (tfds array_record cache of a source folder)
is rebuilt from the folder, with a warning naming it."""

import logging
import os

import pytest

from mgtil_jax.data import builder
from mgtil_jax.data.sources import base
from test_builder import _data_cfg, _source  # pylint: disable=import-error


def _prepared(tmp_path, monkeypatch):
  monkeypatch.setitem(base.SOURCES, 'toy_a', _source('toy_a'))
  (tmp_path / 'data' / 'toy_a').mkdir(parents=True)
  cfg = _data_cfg(tmp_path, ('toy_a',))
  task = builder.load_sources(cfg, None)[0]
  folder = builder.build(base.SOURCES['toy_a'], str(tmp_path / 'data' /
                                                    'toy_a'),
                         data_dir=cfg.data_dir, image_size=4,
                         test_fraction=0.25).data_dir
  return cfg, task, folder


@pytest.mark.parametrize('damage', ['records', 'info'])
def test_corrupt_prepared_dataset_is_rebuilt(tmp_path, monkeypatch, caplog,
                                             damage):
  cfg, task, folder = _prepared(tmp_path, monkeypatch)
  names = [f for f in os.listdir(folder) if (
      'array_record' in f if damage == 'records' else f == 'dataset_info.json')]
  assert names
  for name in names:
    with open(os.path.join(folder, name), 'wb') as f:
      f.write(b'\x00 truncated')
  with caplog.at_level(logging.WARNING):
    again = builder.load_sources(cfg, None)[0]
  assert 'rebuilding' in caplog.text and 'toy_a' in caplog.text
  assert (again.train_images == task.train_images).all()
  assert (again.test_labels == task.test_labels).all()
