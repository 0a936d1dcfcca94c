r"""A continual sequence of MedMNIST 2D subsets.

  python launch.py --config configs/medmnist.py:root=~/.medmnist,res=64 \
      --workdir runs/medmnist

Arguments (comma separated key=value):
  root      folder of the official MedMNIST .npz files (required; the folder
            `medmnist` downloads to is ~/.medmnist). Files are read, never
            fetched; get them with
            python -m mgtil_jax.data.sources.medmnist --download all --size 64
  flags     subsets joined by '+', in task order (default: the 12 2D subsets
            grouped by domain, see FLAGS)
  res       MedMNIST file resolution: 28 | 64 | 128 | 224 (default 28)
  size      model image size (default: the preset's; images are resized)
  method, preset (default tiny), steps (default 300), tasks, data_dir,
  corpus, pool, runlocal  as in configs/hieramed.py
"""

from configs import common, retrieval, source_data

# The 12 MedMNIST 2D subsets, grouped by domain.
FLAGS = ('pneumoniamnist', 'chestmnist', 'organamnist', 'organcmnist',
         'organsmnist', 'pathmnist', 'bloodmnist', 'tissuemnist',
         'dermamnist', 'retinamnist', 'octmnist', 'breastmnist')


def get_config(arg=None):
  a = common.parse_arg(arg, root='', flags='', res=28, method='ft',
                       preset='tiny', size=0, steps=300, tasks=0, data_dir='',
                       corpus='', pool='', runlocal=False)
  if a.res not in (28, 64, 128, 224):
    raise ValueError(f'medmnist config: res must be 28, 64, 128 or 224, got '
                     f'{a.res!r}')
  flags = tuple(f for f in str(a.flags).split('+') if f) or FLAGS
  unknown = sorted(set(flags) - set(FLAGS))
  if unknown:
    raise ValueError(f'medmnist config: unknown flags {unknown}; expected '
                     f'some of {FLAGS}')
  names = [f if a.res == 28 else f'{f}_{a.res}' for f in flags]
  c = common.base_config()
  c.method = a.method
  c.data = source_data.data_config(
      benchmark='medmnist', sources=names, root=a.root,
      # every subset's file lies in root itself
      folders={n: '.' for n in names},
      image_size=source_data.image_size_of(a.preset, a.size),
      num_tasks=a.tasks, data_dir=a.data_dir)
  retrieval.apply_args(c, corpus=a.corpus, pool=a.pool)
  return source_data.apply_training(c, preset=a.preset, steps=a.steps,
                                     runlocal=a.runlocal)
