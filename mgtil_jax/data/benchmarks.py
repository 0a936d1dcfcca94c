"""`config.data.name` -> the benchmark's tasks: the embedded synthetic one
(data/tasks.py) or any sequence of registered dataset readers built into
tfds datasets (data/builder.py). Above both, so neither imports the
other's caller."""

from __future__ import annotations

import os

from mgtil_jax.data import tasks as tasks_lib


def _source_tasks(data_cfg, cache_dir: str | None) -> list[tasks_lib.TaskData]:
  # Imported here: the builder pulls in tensorflow_datasets, which the
  # embedded synthetic benchmark does not need.
  from mgtil_jax.data import builder  # pylint: disable=g-import-not-at-top
  return builder.load_sources(data_cfg, cache_dir)


# config.data.name -> loader(data_cfg, cache_dir). 'sources': any sequence of
# registered dataset readers (MGTIL, MedMNIST, VQA-RAD, MedPix, your own)
# built into tfds datasets; see mgtil_jax/data/builder.py and docs/data.md.
LOADERS = {'mgtil_synth': tasks_lib.synth_tasks,
           'sources': _source_tasks}


def load_benchmark(data_cfg, cache_dir: str | None = None) -> list[tasks_lib.TaskData]:
  if data_cfg.name not in LOADERS:
    raise ValueError(f'config.data.name: unknown benchmark {data_cfg.name!r}; '
                     f'expected one of {sorted(LOADERS)}')
  if cache_dir:
    os.makedirs(cache_dir, exist_ok=True)
  return LOADERS[data_cfg.name](data_cfg, cache_dir)
