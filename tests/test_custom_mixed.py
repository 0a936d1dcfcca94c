"""configs/custom.py mixes task kinds from the command line (tasks=name:kind)
or a JSON / YAML task list (tasks_file=): a MedMNIST npz, an image folder
and a CSV table in one sequence, files made here in their real formats
(the npz as MedMNIST writes it: {split}_images uint8, {split}_labels [N, 1])."""

import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from configs import custom
from mgtil_jax.data import builder


def _png(path, value):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(path)


def _make_data(root):
  """root/breastmnist.npz, root/knee/<class>/*.png, root/skin/labels.csv."""
  rng = np.random.default_rng(0)
  arrays = {}
  for split, n in (('train', 6), ('val', 2), ('test', 4)):
    labels = np.arange(n) % 2
    # Class 1 bright, class 0 dark, so the labels can be checked by pixels.
    images = np.where(labels[:, None, None] == 1, 220, 20).astype(np.uint8)
    images = np.broadcast_to(images, (n, 28, 28)).copy()
    images += rng.integers(0, 5, images.shape, dtype=np.uint8)
    arrays[f'{split}_images'] = images
    arrays[f'{split}_labels'] = labels[:, None].astype(np.uint8)
  os.makedirs(root, exist_ok=True)
  np.savez_compressed(os.path.join(root, 'breastmnist.npz'), **arrays)
  for i in range(5):
    _png(os.path.join(root, 'knee', 'normal_knee', f'{i}.png'), 10 + i)
    _png(os.path.join(root, 'knee', 'osteoarthritis', f'{i}.png'), 200 + i)
  for i in range(4):
    _png(os.path.join(root, 'skin', 'img', f'{i}.png'), 50 + i)
  with open(os.path.join(root, 'skin', 'labels.csv'), 'w') as f:
    f.write('path,label\n' + ''.join(
        f'img/{i}.png,{"nevus" if i % 2 else "melanoma"}\n' for i in range(4)))


def _check(task_list):
  breast, knee, skin = task_list
  # The npz reader's classes and domain (MedMNIST's) and its official test
  # split (the file's 4 test images), labels following the pixels.
  assert breast.name == 'breastmnist' and breast.domain == 'ultrasound'
  assert len(breast.class_names) == 2 and len(breast.test_labels) == 4
  bright = breast.test_images.reshape(4, -1).mean(1) > 100
  assert (bright == (breast.test_labels == 1)).all()
  assert knee.class_names == ('normal knee', 'osteoarthritis')
  assert skin.class_names == ('melanoma', 'nevus')
  return breast, knee, skin


def test_tasks_argument_mixes_kinds(tmp_path):
  root = str(tmp_path / 'mine')
  _make_data(root)
  c = custom.get_config(f'root={root},tasks=breastmnist:npz+knee:folder+'
                        'skin:csv,domain=xray')
  assert c.data.sources == ('breastmnist', 'knee', 'skin')
  c.data.data_dir = str(tmp_path / 'tfds')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # not the official file's MD5
    _, knee, skin = _check(builder.load_sources(c.data, None))
  assert knee.domain == 'xray' and skin.domain == 'xray'


@pytest.mark.parametrize('fmt', ['json', 'yaml'])
def test_tasks_file(tmp_path, fmt):
  root = tmp_path / 'data'
  _make_data(str(root))
  tasks = [{'name': 'breastmnist', 'kind': 'npz'},
           {'name': 'knee', 'kind': 'folder', 'domain': 'xray',
            'class_names': {'normal_knee': 'healthy knee joint',
                            'osteoarthritis': 'knee osteoarthritis'}},
           {'name': 'derm', 'kind': 'csv', 'path': 'skin',
            'domain': 'dermoscopy'}]
  path = tmp_path / f'tasks.{fmt}'
  if fmt == 'json':
    path.write_text(json.dumps({'root': 'data', 'tasks': tasks}))
  else:
    import yaml
    path.write_text(yaml.safe_dump({'root': 'data', 'tasks': tasks}))
  c = custom.get_config(f'tasks_file={path}')
  c.data.data_dir = str(tmp_path / 'tfds')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    task_list = builder.load_sources(c.data, None)
  breast, knee, skin = task_list
  assert breast.name == 'breastmnist' and skin.name == 'derm'
  assert knee.class_names == ('healthy knee joint', 'knee osteoarthritis')
  assert knee.domain == 'xray' and skin.domain == 'dermoscopy'
  assert skin.class_names == ('melanoma', 'nevus')


@pytest.mark.parametrize('arg, match', [
    ('root=/r,tasks=a:bogus', "unknown kind 'bogus'"),
    ('root=/r,tasks=notaflag:npz', 'not a MedMNIST flag'),
    ('root=/r,tasks=a+a', "'a' appears twice"),
    ('tasks_file=/nonexistent/tasks.yaml', 'tasks_file: /nonexistent'),
])
def test_bad_task_lists_name_the_argument(arg, match):
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    custom.get_config(arg)


def test_bad_tasks_file_fields(tmp_path):
  path = tmp_path / 't.json'
  path.write_text(json.dumps([{'name': 'a', 'folder': 'x'}]))
  with pytest.raises(ValueError, match=r"unknown fields \['folder'\]"):
    custom.get_config(f'tasks_file={path}')
  path.write_text('{not json')
  with pytest.raises(ValueError, match='could not be parsed'):
    custom.get_config(f'tasks_file={path}')
