r"""HieraMedTransfer (MGTIL): 9 datasets in 3 domains (docs/datasets.md).

  python launch.py --config configs/hieramed.py:root=/data/mgtil,order=I \
      --workdir runs/hieramed_I

Arguments (comma separated key=value):
  root      folder holding one sub-folder per dataset (required)
  order     I (by domain, the paper's headline) | II (alphabetical)
  method    ft | l2 | zeroshot | ...         (default ft)
  preset    vit_b16_pubmedbert | tiny         (default vit_b16_pubmedbert)
  size      image size (default: the preset's, 224 / 32)
  steps     training steps per task           (default 1000, the ZSCL recipe)
  tasks     keep only the first N tasks of the order (default 0 = all)
  data_dir  where built datasets go (default <workdir>/data/tfds; share it
            between runs to build each dataset once per size)
  corpus    image-caption corpus of zscl / snd / primed / primed_uni / gift
            (required by them: this benchmark has none built in): a JSONL /
            CSV / Parquet file of image path + caption, a MedPix 2.0 folder,
            webdataset .tar shards, or a folder of such files; several joined
            by '+' (docs/retrieval.md)
  pool      question pool file, JSON or CSV (default: the packaged medical
            pool, mgtil_jax/retrieval/pools/medical_default.json)
  runlocal  a few steps of everything (a smoke test on real folders)

Folders under root, each in its dataset's own public layout (`python -m
mgtil_jax.data.builder --list` prints every reader's expected layout and
where to get the files); rename with --config.data.folders.<name>=<folder>:

  ranzcr/      RANZCR-CLiP            chexchonet/  CheXchoNet
  pd/          COVID/pneumonia/normal breakhis/    BreakHis
  chaoyang/    Chaoyang               gashissdb/   GasHisSDB (160 px)
  eyepacs/     EyePACS                airogs/      AIROGS
  farfum_rop/  FARFUM-RoP

A missing folder stops the run before any model is built, naming it.
"""

from configs import common, retrieval, source_data

# The registry names of the readers in sources/ (the same orders as
# mgtil_jax.data.sources.mgtil.HIERAMED_ORDERS; tests/test_builder.py checks).
ORDERS = {
    'I': ('ranzcr', 'chexchonet', 'pd', 'breakhis', 'chaoyang', 'gashissdb',
          'eyepacs', 'airogs', 'farfum_rop'),
    'II': ('airogs', 'breakhis', 'chaoyang', 'chexchonet', 'eyepacs',
           'farfum_rop', 'gashissdb', 'pd', 'ranzcr'),
}


def sequence_config(arg, benchmark: str, orders: dict):
  """The config of an MGTIL benchmark (shared with configs/medxtreme.py)."""
  a = common.parse_arg(arg, root='', order='I', method='ft',
                       preset='vit_b16_pubmedbert', size=0, steps=1000,
                       tasks=0, data_dir='', corpus='', pool='',
                       runlocal=False)
  order = str(a.order)
  if order not in orders:
    raise ValueError(f'{benchmark} config: order must be one of '
                     f'{sorted(orders)}, got {order!r}')
  c = common.base_config()
  c.method = a.method
  c.data = source_data.data_config(
      benchmark=benchmark, sources=orders[order], root=a.root,
      image_size=source_data.image_size_of(a.preset, a.size),
      num_tasks=a.tasks, data_dir=a.data_dir)
  retrieval.apply_args(c, corpus=a.corpus, pool=a.pool)
  return source_data.apply_training(c, preset=a.preset, steps=a.steps,
                                     runlocal=a.runlocal)


def get_config(arg=None):
  return sequence_config(arg, 'hieramed', ORDERS)
