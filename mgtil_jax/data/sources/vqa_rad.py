"""VQA-RAD images classified by organ (head / chest / abdomen).

VQA-RAD (Lau et al. 2018) is a question-answering set over 315 radiology
images; each question record names its image and the image's organ
(`image_organ`: HEAD, CHEST or ABD). Here every image is one example whose
label is that organ. The dataset's train/test split is by question and every
test image also appears in training questions, so it is not used: the images
get a deterministic stratified split instead (`SPLIT_SEED`,
`TEST_FRACTION`, ordered by file name).

Layout (the MEVF / MUMC distribution, as `data_RAD/`):

    <root>/trainset.json   <root>/testset.json   <root>/images/synpic*.jpg
"""

from __future__ import annotations

import json
import os

import numpy as np

from mgtil_jax.data.sources.base import (Example, Source, register, require,
                                         stratified_split)

ORGANS = ('HEAD', 'CHEST', 'ABD')
CLASS_NAMES = ('head', 'chest', 'abdomen')
TEST_FRACTION = 0.25
SPLIT_SEED = 0
LAYOUT = ('<root>/trainset.json, <root>/testset.json (question records with '
          'image_name, image_organ), <root>/images/<image_name>')


QUESTION_FILES = ('trainset.json', 'testset.json')


def question_records(root: str):
  """(path, list of question records) of each question file; the task
  reader here and the retrieval corpus's VQA-RAD reader both read them."""
  for file in QUESTION_FILES:
    path = os.path.join(root, file)
    with open(path, encoding='utf-8') as f:
      records = json.load(f)
    if not isinstance(records, list):
      raise ValueError(f'{path}: expected a list of question records')
    yield path, records


def image_organs(root: str) -> dict[str, int]:
  """image file name -> organ label, over both question files; an image whose
  questions disagree on its organ is an error."""
  require(root, [*QUESTION_FILES, 'images'], 'vqa_rad',
          LAYOUT)
  organs: dict[str, int] = {}
  for path, records in question_records(root):
    for i, r in enumerate(records):
      name, organ = r.get('image_name'), str(r.get('image_organ', '')).strip()
      if not name or organ not in ORGANS:
        raise ValueError(f'{path}: record {i} has image_name={name!r}, '
                         f'image_organ={r.get("image_organ")!r}; expected an '
                         f'image name and one of {ORGANS}')
      label = ORGANS.index(organ)
      if organs.setdefault(name, label) != label:
        raise ValueError(f'{path}: image {name} is labelled both '
                         f'{ORGANS[organs[name]]} and {organ}')
  return organs


def read(root: str) -> dict:
  organs = image_organs(root)
  keys = sorted(organs)
  missing = [k for k in keys if not os.path.isfile(
      os.path.join(root, 'images', k))]
  if missing:
    raise FileNotFoundError(f'vqa_rad: {len(missing)} images named in the '
                            f'question files are missing from '
                            f'{os.path.join(root, "images")}, e.g. '
                            f'{missing[:5]}')
  labels = np.asarray([organs[k] for k in keys])
  tr, te = stratified_split(keys, labels, TEST_FRACTION, SPLIT_SEED)
  make = lambda idx: [Example(os.path.join(root, 'images', keys[i]),
                              int(labels[i]), keys[i]) for i in idx]
  return {'train': make(tr), 'test': make(te)}


SOURCE = register(Source(
    name='vqa_rad_organ', domain='radiology', class_names=CLASS_NAMES,
    read=read, homepage='https://osf.io/89kps/',
    citation=('Lau J.J., Gayen S., Ben Abacha A., Demner-Fushman D., "A '
              'dataset of clinically generated visual questions and answers '
              'about radiology images", Scientific Data 5:180251 (2018).'),
    layout=LAYOUT,
    split_policy=(f'one example per image; stratified by organ, '
                  f'{TEST_FRACTION:g} to test (seed {SPLIT_SEED}); the '
                  'question-level split is not used (it shares images)'),
    label_policy='the image_organ field of the image\'s questions'))
