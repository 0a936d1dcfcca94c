r"""A small continual sequence of REAL public medical images (5 tasks).

  python launch.py --config configs/real_mini.py --workdir runs/real_mini

Tasks, in order (data under root = ../shared/data next to the repository by
default; its MANIFEST.md gives provenance and licences):
  pneumoniamnist  paediatric chest X-ray, normal vs pneumonia (a modified
                  PneumoniaMNIST: training split subsampled in 'normal')
  breastmnist     breast ultrasound, malignant vs normal/benign
  retinamnist     colour fundus, 5 diabetic-retinopathy grades
  vqa_rad_organ   VQA-RAD radiology images by organ (head / chest / abdomen)
  medpix_ct_mr    MedPix 2.0 images, CT vs MR (dev split trains, test tests)

Every method runs from the command line, e.g.

  python launch.py --config=configs/real_mini.py:method=primed --workdir runs/rm
  python launch.py --config=configs/real_mini.py --workdir runs/rm_all \
      --compare=all

Arguments (comma separated key=value):
  root      the data folder (default: $MGTIL_DATA if set, else
            ../shared/data beside the repository)
  corpus    image-caption corpus of zscl / snd / primed / primed_uni / gift
            (default real_mini: MedPix 2.0 images with their captions +
            VQA-RAD images captioned from organ and questions, minus every
            evaluation image of the medpix_ct_mr and vqa_rad_organ tasks;
            docs/retrieval.md); or a file / folder in a layout of
            docs/retrieval.md
  pool      question pool file (default: the packaged medical pool)
  size      image size: the preset's (32 for tiny, for speed; 224 for
            vit_b16_pubmedbert); images are resized to it when built
  method    ft | l2 | zeroshot | ...    (default ft)
  preset    tiny | vit_b16_pubmedbert   (default tiny)
  steps     training steps per task    (default 400)
  tasks     keep only the first N tasks (default 0 = all 5)
  data_dir  where built datasets go (default <workdir>/data/tfds)
  runlocal  a few steps of everything (tests/test_real_mini.py)
"""

import os

from configs import common, retrieval, source_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The data folder: $MGTIL_DATA, else ../shared/data beside the repository.
ENV_ROOT = 'MGTIL_DATA'


def default_root() -> str:
  return os.environ.get(ENV_ROOT) or os.path.normpath(
      os.path.join(REPO, '..', 'shared', 'data'))


SOURCES = ('pneumoniamnist', 'breastmnist', 'retinamnist', 'vqa_rad_organ',
           'medpix_ct_mr')
# Folder of each dataset under root (the layout of ../shared/data).
FOLDERS = {'pneumoniamnist': 'pneumoniamnist_kaggle_rijulshr',
           'breastmnist': 'breastmnist', 'retinamnist': 'retinamnist',
           'vqa_rad_organ': 'vqa_rad', 'medpix_ct_mr': 'medpix2'}


def get_config(arg=None):
  a = common.parse_arg(arg, root='', size=0, method='ft',
                       preset='tiny', steps=400, tasks=0, data_dir='',
                       corpus='', pool='', runlocal=False)
  root = os.path.abspath(os.path.expanduser(str(a.root or default_root())))
  c = common.base_config()
  c.method = a.method
  c.data = source_data.data_config(
      benchmark='real_mini', sources=SOURCES, root=root, folders=FOLDERS,
      image_size=source_data.image_size_of(a.preset, a.size),
      num_tasks=a.tasks, data_dir=a.data_dir)
  c.data.build_threads = 2  # small images; CI has 2 cores
  # The corpus of the reference-batch methods: real_mini's own (the reader
  # 'real_mini' of mgtil_jax/retrieval/corpus.py) unless corpus= names one.
  builtin = {'kind': 'real_mini',
             'medpix': os.path.join(root, FOLDERS['medpix_ct_mr']),
             'vqa_rad': os.path.join(root, FOLDERS['vqa_rad_organ'])}
  retrieval.apply_args(c, corpus='' if a.corpus == 'real_mini' else a.corpus,
                       pool=a.pool, builtin=builtin)
  c.checkpoint.every_steps = 100
  # pneumoniamnist's training split keeps 10% 'normal' where its test split
  # has 37.5% (the subsampled copy docs/data.md describes): an
  # unweighted CE fits the training prior and predicts 'pneumonia' for every
  # test image. Weighting its CE by inverse class frequency undoes the
  # subsampling (docs/methods.md, "Class balance"; benchmarks/RESULTS.md,
  # "Real data that learns").
  c.train.class_balance = 'pneumoniamnist'
  source_data.apply_training(c, preset=a.preset, steps=a.steps,
                             runlocal=a.runlocal)
  if a.runlocal:  # CI runs this: skip the synthetic pretraining's compile
    c.model.init = 'random'
  return c
