"""Reference batches: the image-caption pairs that distillation methods
(PRIMED, ZSCL, LwF, ...) see beside each task batch.

The trainer talks to one interface, `ReferenceSource`:

  source.prepare(task_index, teacher_params) -> dict   # json-able stats
      Called at the start of task `task_index` (0-based), and again on a
      resume inside that task, with the params after the previous task. It
      (re)builds the reference set for that task; it must be deterministic
      given (config, seed, task_index, teacher_params) so a resumed run sees
      the same set.
  source.batch(task_index, step) -> {'image': uint8[B, S, S, 3],
                                     'tokens': int32[B, L]}
      Host NumPy arrays; a pure function of (seed, task_index, step) once
      prepared. The trainer places it with the task batch's sharding. L is
      the batch's longest caption rounded up to a bucket
      (`tokenizer.trim_padding`): the text tower pays for real tokens, and
      only a few shapes compile.

`FixedReferenceSet` is the simplest source: a fixed random subset of an
image-caption corpus, the same for every task. The retrieval memory
(`mgtil_jax.retrieval`) provides the PRIMED sources.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from mgtil_jax.models import tokenizer as tokenizer_lib
from mgtil_jax.data import tasks as tasks_lib

# Keeps reference-batch shuffles independent of task-batch shuffles.
REFERENCE_STREAM = 20_000


class ReferenceSource(Protocol):

  def prepare(self, task_index: int, teacher_params) -> dict:
    ...

  def batch(self, task_index: int, step: int) -> dict:
    ...


class FixedReferenceSet:
  """A fixed reference set: `images` uint8[N, S, S, 3], `tokens` int32[N, L]
  (padded with `pad_id`; each batch is trimmed to multiples of `bucket`)."""

  def __init__(self, images: np.ndarray, tokens: np.ndarray, batch_size: int,
               seed: int, *, pad_id: int = 0,
               bucket: int | None = tokenizer_lib.DEFAULT_BUCKET):
    if len(images) != len(tokens) or not len(images):
      raise ValueError(f'reference set: expected as many images as captions '
                       f'(> 0), got {len(images)} and {len(tokens)}')
    self.images, self.tokens = images, tokens
    self.batch_size, self.seed = batch_size, seed
    self.pad_id, self.bucket = pad_id, bucket

  def __len__(self):
    return len(self.images)

  def prepare(self, task_index: int, teacher_params) -> dict:
    del task_index, teacher_params
    return {'size': len(self)}

  def batch(self, task_index: int, step: int) -> dict:
    idx = tasks_lib.batch_indices(len(self), self.batch_size, step, self.seed,
                                  stream=REFERENCE_STREAM + task_index)
    return {'image': self.images[idx],
            'tokens': tokenizer_lib.trim_padding(self.tokens[idx], self.bucket,
                                                 self.pad_id)}
