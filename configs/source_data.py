"""The `config.data` of benchmarks built from dataset readers (`Source`s).

Shared by configs/hieramed.py, medxtreme.py, medmnist.py, custom.py and
real_mini.py; the loader is `mgtil_jax.data.builder.load_sources`.
"""

from __future__ import annotations

import ml_collections

from mgtil_jax.models import presets


def data_config(*, benchmark: str, sources, root: str, image_size: int,
                folders: dict | None = None, num_tasks: int = 0,
                data_dir: str = '', custom: dict | None = None
                ) -> ml_collections.ConfigDict:
  if not root:
    raise ValueError(f'{benchmark} config: pass the data root, e.g. '
                     f'--config configs/{benchmark}.py:root=/data/{benchmark}')
  if image_size <= 0:
    raise ValueError(f'{benchmark} config: size must be positive, got '
                     f'{image_size}')
  return ml_collections.ConfigDict(dict(
      name='sources',
      benchmark=benchmark,
      sources=tuple(sources),   # registry names, in task order
      root=root,                # each dataset in root/<folders[name] or name>
      # every name present, so --config.data.folders.<name>=... can override
      folders={**{n: n for n in sources}, **(folders or {})},
      custom=dict(custom or {}),  # bring-your-own datasets (sources.byo)
      num_tasks=num_tasks,      # 0 = the whole sequence
      image_size=image_size,    # stored resolution = the model's input size
      seed=0,                   # seed of splits the builder makes
      test_fraction=0.2,        # for datasets without an official test split
      data_dir=data_dir,        # built tfds datasets; '' = <workdir>/data/tfds
      build_threads=8,          # image decode/resize threads while building
      pipeline='grain',         # or 'stateless' (batch = f(step), no state)
      workers=0,                # grain worker processes (data is in memory)
  ))


def image_size_of(preset: str, size: int) -> int:
  """The stored image size: the model preset's input resolution (the ViT's
  position table is sized for it), which `size`, if given, must equal."""
  native = presets.get_preset(preset).vision.image_size
  if size and size != native:
    raise ValueError(f'size={size}: the {preset!r} preset takes '
                     f'{native}px images; leave size unset or pick a preset '
                     f'of that resolution')
  return native


def apply_training(c, *, preset: str, steps: int, runlocal: bool):
  """Preset-dependent training settings, and the runlocal shrink."""
  c.model.preset = preset
  c.train.steps_per_task = steps
  if preset == 'tiny':
    # No pretrained weights exist for the tiny model: contrastive pretraining
    # on the synthetic corpus gives it a text-image alignment to start from.
    c.model.init = 'pretrain'
    c.pretrain = dict(seed=42,  # one start for every run seed (mgtil_synth)
                      corpus_per_class=120, steps=600, batch_size=128,
                      lr=1e-3, warmup_steps=50, weight_decay=0.05)
    c.train.lr = 1e-4  # far from a converged CLIP: 1e-5 would barely move it
    c.train.batch_size = 32
    c.train.warmup_steps = max(1, steps // 10)
  if runlocal:
    c.train.steps_per_task = min(steps, 4)
    c.train.batch_size = 8
    c.train.warmup_steps = 1
    c.train.log_every = 2
    c.checkpoint.every_steps = 2
    c.eval.batch_size = 32
    if preset == 'tiny':
      c.pretrain.update(corpus_per_class=8, steps=4, batch_size=32,
                        warmup_steps=1)
  return c
