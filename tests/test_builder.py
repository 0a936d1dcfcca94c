"""Tests for mgtil_jax.data.builder: image conversion, the generic tfds
builder (array_record, no TensorFlow), the 'sources' loader and its
fail-fast folder check, and the MGTIL benchmark configs."""

import io
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mgtil_jax.data import benchmarks, builder, tasks
from mgtil_jax.data.sources import base

# ------------------------------------------------------------------ images --


def test_resize_keeps_the_centre_square():
  # 40x80 image: red | green | blue columns of widths 12 | 56 | 12. Resized
  # to 20 rows (x0.5) it is 6 | 28 | 6 wide; the centre 20 columns (10..30)
  # lie inside green with a 4-pixel margin, more than bicubic's 2-pixel reach.
  a = np.zeros((40, 80, 3), np.uint8)
  a[:, :12, 0] = 255
  a[:, 12:68, 1] = 255
  a[:, 68:, 2] = 255
  out = builder.to_rgb(a, 20)
  assert out.shape == (20, 20, 3) and out.dtype == np.uint8
  np.testing.assert_allclose(out[..., 1], 255, atol=1)
  np.testing.assert_allclose(out[..., [0, 2]], 0, atol=1)


def test_grey_rgba_and_16_bit_images():
  grey = np.full((8, 8), 77, np.uint8)
  np.testing.assert_array_equal(builder.to_rgb(grey, 8), np.full((8, 8, 3), 77))
  rgba = np.zeros((8, 8, 4), np.uint8)
  rgba[..., :3] = 200
  rgba[:4, :, 3] = 255  # top half opaque, bottom half transparent
  out = builder.to_rgb(rgba, 8)
  assert (out[:4] == 200).all() and (out[4:] == 0).all()
  # A 16-bit PNG holding 1000 and 3000: stretched to 0 and 255.
  buf = io.BytesIO()
  img16 = np.full((8, 8), 1000, np.uint16)
  img16[:, 4:] = 3000
  Image.fromarray(img16).save(buf, format='PNG')
  out = builder.to_rgb(buf.getvalue(), 8)
  assert (out[:, :4] == 0).all() and (out[:, 4:] == 255).all()


def test_bad_images_name_the_example(tmp_path):
  with pytest.raises(ValueError, match="'k1'.*uint8"):
    builder.to_rgb(np.zeros((4, 4, 3), np.float32), 4, 'k1')
  with pytest.raises(FileNotFoundError, match="'k2'"):
    builder.to_rgb(str(tmp_path / 'nope.png'), 4, 'k2')
  (tmp_path / 'junk.png').write_bytes(b'not an image')
  with pytest.raises(ValueError, match="'k3'.*decode"):
    builder.to_rgb(str(tmp_path / 'junk.png'), 4, 'k3')


# ----------------------------------------------------------------- builder --


def _colour(i):
  return np.asarray([(37 * i) % 256, (91 * i) % 256, (13 * i + 5) % 256],
                    np.uint8)


def _source(name='toy', class_names=('calm', 'storm'), n_train=12, n_test=4,
            calls=None, domain='toy_domain'):
  """Constant-colour images: colour i survives resizing and PNG exactly."""
  def read(root):
    if calls is not None:
      calls.append(root)
    make = lambda split, n, off: [
        base.Example(np.tile(_colour(off + i), (6, 10, 1)), i % 2,
                     f'{split}/{off + i:03d}') for i in range(n)]
    out = {'train': make('train', n_train, 0)}
    if n_test:
      out['test'] = make('test', n_test, 100)
    return out
  return base.Source(name=name, domain=domain, class_names=class_names,
                     read=read, split_policy='official (toy)')


def test_build_and_load_round_trip(tmp_path):
  calls = []
  src = _source(calls=calls)
  b = builder.build(src, str(tmp_path / 'raw'), data_dir=str(tmp_path / 'd'),
                    image_size=8, seed=3)
  task = builder.load_task(b)
  assert task.name == 'toy' and task.domain == 'toy_domain'
  assert task.class_names == ('calm', 'storm')
  assert task.train_images.shape == (12, 8, 8, 3)
  assert task.test_images.shape == (4, 8, 8, 3)
  # Ordered by key: train/000 .. train/011, each its own colour and label.
  for i in range(12):
    np.testing.assert_array_equal(task.train_images[i],
                                  np.tile(_colour(i), (8, 8, 1)))
  np.testing.assert_array_equal(task.train_labels, np.arange(12) % 2)
  np.testing.assert_array_equal(task.test_images[:, 0, 0],
                                [_colour(100 + i) for i in range(4)])
  meta = b.info.metadata
  assert meta['image_size'] == 8 and meta['seed'] == 3
  assert meta['class_names'] == ['calm', 'storm']
  assert meta['domain'] == 'toy_domain'
  assert meta['split_policy'] == 'official (toy)'
  assert meta['root'] == str(tmp_path / 'raw')
  # array_record files under <data_dir>/mgtil_source/<config>/<version>.
  files = os.listdir(b.data_dir)
  assert any(f.startswith('mgtil_source-train.array_record') for f in files)

  # Built once: loading again does not read the source...
  b2 = builder.build(src, str(tmp_path / 'raw'),
                     data_dir=str(tmp_path / 'd'), image_size=8, seed=3)
  assert len(calls) == 1
  assert builder.load_task(b2).train_labels.tolist() == (
      task.train_labels.tolist())
  # ...unless what it records no longer matches the source.
  renamed = _source(class_names=('calm sea', 'storm'), calls=calls)
  b3 = builder.build(renamed, str(tmp_path / 'raw'),
                     data_dir=str(tmp_path / 'd'), image_size=8, seed=3)
  assert len(calls) == 2
  assert builder.load_task(b3).class_names == ('calm sea', 'storm')


def test_a_source_without_test_split_gets_a_stratified_one(tmp_path):
  src = _source(n_train=20, n_test=0)
  b = builder.build(src, str(tmp_path), data_dir=str(tmp_path / 'd'),
                    image_size=4, seed=0, test_fraction=0.3)
  task = builder.load_task(b)
  # 10 per class, 0.3 -> 3 per class to test (round(10 * 0.3)).
  assert np.bincount(task.test_labels).tolist() == [3, 3]
  assert np.bincount(task.train_labels).tolist() == [7, 7]
  assert 'stratified' in b.info.metadata['split_policy']
  # Disjoint, and together the whole pool (colours are unique per example).
  seen = {tuple(x) for x in np.concatenate(
      [task.train_images[:, 0, 0], task.test_images[:, 0, 0]])}
  assert len(seen) == 20


def test_bad_labels_and_duplicate_keys_are_named(tmp_path):
  def bad_label(root):
    return {'train': [base.Example(np.zeros((2, 2), np.uint8), 5, 'a')],
            'test': []}
  src = base.Source('bad', 'd', ('x', 'y'), bad_label)
  with pytest.raises(ValueError, match=r"bad/train.*'a'.*\[0, 2\)"):
    builder.checked_splits(src, str(tmp_path), 0, 0.2)

  def duplicate(root):
    e = base.Example(np.zeros((2, 2), np.uint8), 0, 'same')
    return {'train': [e, e], 'test': []}
  src = base.Source('dup', 'd', ('x', 'y'), duplicate)
  with pytest.raises(ValueError, match="duplicate key 'same'"):
    builder.checked_splits(src, str(tmp_path), 0, 0.2)


# ------------------------------------------------------------------ loader --


def _data_cfg(tmp_path, sources, **kw):
  cfg = dict(name='sources', sources=sources, root=str(tmp_path / 'data'),
             folders={}, custom={}, image_size=4, seed=0, test_fraction=0.25,
             data_dir=str(tmp_path / 'tfds'), num_tasks=0)
  cfg.update(kw)
  return ml_collections.ConfigDict(cfg)


def test_sources_loader_via_load_benchmark(tmp_path, monkeypatch):
  monkeypatch.setitem(base.SOURCES, 'toy_a', _source('toy_a'))
  monkeypatch.setitem(base.SOURCES, 'toy_b', _source('toy_b', ('x', 'y')))
  (tmp_path / 'data' / 'toy_a').mkdir(parents=True)
  (tmp_path / 'data' / 'elsewhere').mkdir()
  cfg = _data_cfg(tmp_path, ('toy_a', 'toy_b'),
                  folders={'toy_b': 'elsewhere'})
  assert 'sources' in benchmarks.LOADERS
  out = benchmarks.load_benchmark(cfg)
  assert [t.name for t in out] == ['toy_a', 'toy_b']
  assert out[1].class_names == ('x', 'y')
  cfg.num_tasks = 1
  assert len(benchmarks.load_benchmark(cfg)) == 1


def test_missing_folders_are_all_named_before_anything_is_built(tmp_path,
                                                                monkeypatch):
  calls = []
  monkeypatch.setitem(base.SOURCES, 'toy_a', _source('toy_a', calls=calls))
  monkeypatch.setitem(base.SOURCES, 'toy_b', _source('toy_b', calls=calls))
  (tmp_path / 'data' / 'toy_a').mkdir(parents=True)
  cfg = _data_cfg(tmp_path, ('toy_a', 'toy_b', 'not_a_reader'))
  with pytest.raises(base.LayoutError) as e:
    builder.load_sources(cfg, None)
  msg = str(e.value)
  assert str(tmp_path / 'data' / 'toy_b') in msg
  assert str(tmp_path / 'data' / 'not_a_reader') in msg
  assert 'no reader is registered' in msg
  assert 'toy_a:' not in msg
  assert calls == []  # toy_a (present) was not built before the check


def test_a_built_dataset_needs_no_folder(tmp_path, monkeypatch):
  monkeypatch.setitem(base.SOURCES, 'toy_a', _source('toy_a'))
  (tmp_path / 'data' / 'toy_a').mkdir(parents=True)
  cfg = _data_cfg(tmp_path, ('toy_a',))
  builder.load_sources(cfg, None)
  (tmp_path / 'data' / 'toy_a').rmdir()
  assert builder.load_sources(cfg, None)[0].train_images.shape[0] == 12


def test_unknown_reader_with_a_folder(tmp_path):
  (tmp_path / 'data' / 'typo_name').mkdir(parents=True)
  with pytest.raises(ValueError, match="config.data.sources.*'typo_name'"):
    builder.resolve(_data_cfg(tmp_path, ('typo_name',)))


# ----------------------------------------------------------------- configs --


@pytest.mark.parametrize('module,names', [
    ('hieramed', ('ranzcr', 'chexchonet', 'pd', 'breakhis', 'chaoyang',
                  'gashissdb', 'eyepacs', 'airogs', 'farfum_rop')),
    ('medxtreme', ('aod', 'bmc', 'isic2024', 'nct_crc', 'nih_cxr14',
                   'pitvis')),
])
def test_mgtil_configs_fail_fast_naming_every_missing_folder(
    tmp_path, module, names):
  import importlib  # pylint: disable=g-import-not-at-top
  from mgtil_jax import training as train  # pylint: disable=g-import-not-at-top
  cfg_module = importlib.import_module(f'configs.{module}')
  # docs/datasets.md: order I of each benchmark.
  assert cfg_module.ORDERS['I'] == names
  assert sorted(cfg_module.ORDERS['II']) == sorted(names)
  try:  # the readers' own orders, where that module is present
    from mgtil_jax.data.sources import mgtil  # pylint: disable=g-import-not-at-top
  except ImportError:
    mgtil = None
  if mgtil is not None:
    own = (mgtil.HIERAMED_ORDERS if module == 'hieramed' else
           mgtil.MEDXTREME_ORDERS)
    assert {k: tuple(v) for k, v in own.items()} == cfg_module.ORDERS

  root = tmp_path / 'mgtil'
  root.mkdir()
  c = cfg_module.get_config(f'root={root},order=II,preset=tiny,runlocal')
  assert c.data.sources == cfg_module.ORDERS['II']
  with pytest.raises(base.LayoutError) as e:
    train.run(c, str(tmp_path / 'w'))
  for name in names:
    assert str(root / name) in str(e.value)
  # Failed in setup: no checkpoint, no params were ever made.
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')


def test_configs_need_a_root_and_a_matching_size():
  from configs import hieramed, medmnist  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='root='):
    hieramed.get_config('order=I')
  with pytest.raises(ValueError, match='order'):
    hieramed.get_config('root=/x,order=III')
  with pytest.raises(ValueError, match='32px'):
    medmnist.get_config('root=/x,preset=tiny,size=64')
  c = medmnist.get_config('root=/x,res=64,flags=pathmnist+octmnist')
  assert c.data.sources == ('pathmnist_64', 'octmnist_64')
