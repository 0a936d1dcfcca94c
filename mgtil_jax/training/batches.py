"""Device batches of one task: the grain pipeline (each process loads its
rows of the global batch) or the stateless sampler."""

from __future__ import annotations

from mgtil_jax.training.setup import Experiment
from mgtil_jax.core import sharding
from mgtil_jax.data import pipeline as pipeline_lib
from mgtil_jax.data import tasks as tasks_lib


class TaskBatches:
  """Device batches of task `task_index` from step `start`, from the grain
  pipeline (`config.data.pipeline = 'grain'`: each process loads only its
  rows of the global batch; `get_state()` goes into the checkpoint record)
  or from the stateless sampler (`'stateless'`: every process builds the
  global batch, `get_state()` is None)."""

  def __init__(self, exp: Experiment, task, task_index: int, start: int,
               state: dict | None = None):
    cfg = exp.config
    self._exp, self._task, self._t, self._step = exp, task, task_index, start
    self._size = cfg.train.batch_size
    kind = cfg.data.get('pipeline', 'grain')
    if kind not in ('grain', 'stateless'):
      raise ValueError(f"config.data.pipeline: expected 'grain' or "
                       f"'stateless', got {kind!r}")
    self._pipe = None
    if kind == 'grain':
      self._rows = pipeline_lib.rows_of_sharding(
          sharding.batch_sharding(exp.mesh, exp.rules, 1), self._size)
      self._pipe = pipeline_lib.TaskPipeline(
          task, self._size, cfg.seed, task_index, rows=self._rows,
          worker_count=cfg.data.get('workers', 0))
      if state is None:  # a fresh task, or a record from a stateless run
        state = dict(self._pipe.get_state(), next_batch=start)
      if state.get('next_batch') != start:
        raise ValueError(f'checkpoint: data pipeline at batch '
                         f'{state.get("next_batch")} but the task at step '
                         f'{start}')
      self._pipe.set_state(state)

  def __next__(self) -> dict:
    self._step += 1
    if self._pipe is None:
      return self._exp.put_batch(tasks_lib.task_batch(
          self._task, self._step - 1, self._size, self._exp.config.seed,
          self._t))
    return pipeline_lib.put_rows(next(self._pipe), self._exp.mesh,
                                 self._exp.rules, self._rows, self._size)

  def get_state(self):
    return None if self._pipe is None else self._pipe.get_state()

  def close(self):
    if self._pipe is not None:
      self._pipe.close()


class _TaskStream:
  """(batch, prompts) of one task: its batches, with the task's prompts."""

  def __init__(self, batches: TaskBatches):
    self._batches = batches

  def __next__(self):
    return next(self._batches), None

  def get_state(self):
    return self._batches.get_state()

  def close(self):
    self._batches.close()
