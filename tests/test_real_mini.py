"""The real-data mini sequence (configs/real_mini.py) on ../shared/data: the
VQA-RAD and MedPix readers against MANIFEST.md's counts, and a few steps of
the whole sequence end to end through train.run."""

import collections
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(ROOT, '..', 'shared', 'data'))

pytestmark = pytest.mark.skipif(
    not os.path.isdir(SHARED),
    reason=f'real data folder {SHARED} not present (see its MANIFEST.md)')


def test_vqa_rad_images_by_organ():
  from mgtil_jax.data.sources import vqa_rad  # pylint: disable=g-import-not-at-top
  root = os.path.join(SHARED, 'vqa_rad')
  splits = vqa_rad.SOURCE.read(root)
  train, test = splits['train'], splits['test']
  # MANIFEST: 314 images referenced by the question files, one per example.
  assert len(train) + len(test) == 314
  assert not {e.key for e in train} & {e.key for e in test}
  # Labels from the json's image_organ, read here independently.
  organ = {}
  for f in ('trainset.json', 'testset.json'):
    with open(os.path.join(root, f)) as fh:
      organ.update({r['image_name']: r['image_organ'] for r in json.load(fh)})
  for e in train + test:
    assert vqa_rad.ORGANS[e.label] == organ[e.key]
  # Stratified: each organ's test share is 0.25 of its images, rounded.
  totals = collections.Counter(organ.values())
  in_test = collections.Counter(organ[e.key] for e in test)
  assert in_test == {o: round(n * 0.25) for o, n in totals.items()}


def test_medpix_ct_vs_mr():
  from mgtil_jax.data.sources import medpix  # pylint: disable=g-import-not-at-top
  splits = medpix.SOURCE.read(os.path.join(SHARED, 'medpix2'))
  # MANIFEST: dev 197 + test 200 images, MR 213 and CT 184 in all.
  assert len(splits['train']) == 197 and len(splits['test']) == 200
  labels = np.asarray([e.label for e in splits['train'] + splits['test']])
  assert (labels == 0).sum() == 184 and (labels == 1).sum() == 213
  assert all(os.path.isfile(e.image) for e in splits['test'])


@pytest.mark.slow
# The modified PneumoniaMNIST and re-saved BreastMNIST copies warn by design
# (tests/test_medmnist.py checks those warnings).
@pytest.mark.filterwarnings('ignore:.*(re-saved or modified copy|official '
                            'name).*:UserWarning')
def test_runlocal_sequence_end_to_end(tmp_path):
  from configs import real_mini  # pylint: disable=g-import-not-at-top
  from mgtil_jax import training as train  # pylint: disable=g-import-not-at-top
  c = real_mini.get_config('runlocal')
  assert c.data.root == SHARED
  results = train.run(c, str(tmp_path / 'w'))
  names = ['pneumoniamnist', 'breastmnist', 'retinamnist', 'vqa_rad_organ',
           'medpix_ct_mr']
  assert [t['name'] for t in results['tasks']] == names
  acc = np.asarray(results['accuracy_matrix'])
  assert acc.shape == (5, 5) and np.isfinite(acc).all()
  # The vocabulary covers the real class names as whole words.
  with open(tmp_path / 'w' / 'vocab.txt') as f:
    vocab = set(f.read().split())
  assert {'pneumonia', 'retinopathy', 'malignant', 'abdomen', 'magnetic',
          'tomography'} <= vocab
  # The datasets were built as tfds array_record datasets at 32 px.
  built = os.listdir(tmp_path / 'w' / 'data' / 'tfds' / 'mgtil_source')
  assert sorted(built) == sorted(f'{n}-32px-seed0-test20' for n in names)
