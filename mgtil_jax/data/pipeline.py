"""The training input pipeline of one task, on grain.

Every process builds the same global stream: the training examples are
shuffled afresh each epoch (grain `shuffle` then `repeat`, keyed by
(seed, task index)), cut into global batches of `batch_size` that run across
epoch boundaries (small datasets are cycled, the ZSCL recipe), and each
process then gathers only its own rows of each global batch, the rows its
devices hold. So P processes together load exactly the global batch one
process would, and none loads the rest.

The position is a small JSON-able state (`get_state`: the index of the next
global batch, plus what the stream belongs to), saved in the checkpoint's
JSON record; `set_state` on a fresh pipeline continues the same batch
sequence. Global batch k is a pure function of k (grain's `MapDataset` is
random access), so the state does not depend on the worker count, and a run
may resume with more or fewer workers or processes.
"""

from __future__ import annotations

import numpy as np


def _grain():
  import grain  # pylint: disable=g-import-not-at-top
  return grain


class _GatherRows:
  """Global batch indices int64[B] -> this process's {'image', 'label'}.

  A class, not a closure, so grain can send it to worker processes."""

  def __init__(self, images, labels, rows: tuple[int, int]):
    self.images, self.labels, self.rows = images, labels, rows

  def __call__(self, indices):
    idx = np.asarray(indices)[self.rows[0]:self.rows[1]]
    return {'image': self.images[idx], 'label': self.labels[idx]}


def stream_seed(seed: int, task_index: int) -> int:
  """A 32-bit seed for the stream of task `task_index` of a run seeded
  `seed` (different tasks never share a permutation)."""
  return int(np.random.SeedSequence([seed, task_index, 0x6d67]).generate_state(
      1)[0])


def process_rows(batch_size: int, process_index: int | None = None,
                 process_count: int | None = None) -> tuple[int, int]:
  """Rows [start, stop) of the global batch that process `process_index` of
  `process_count` loads: equal contiguous slices (defaults: this process)."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else (
        process_index)
    process_count = jax.process_count() if process_count is None else (
        process_count)
  if batch_size % process_count:
    raise ValueError(f'batch size {batch_size} does not divide over '
                     f'{process_count} processes')
  per = batch_size // process_count
  return process_index * per, (process_index + 1) * per


def rows_of_sharding(sharding, batch_size: int) -> tuple[int, int]:
  """The contiguous rows [start, stop) of a [batch_size, ...] array that this
  process's devices hold under `sharding` (a batch-sharded NamedSharding)."""
  starts, stops = [], []
  for index in sharding.addressable_devices_indices_map(
      (batch_size,)).values():
    start, stop, _ = index[0].indices(batch_size)
    starts.append(start)
    stops.append(stop)
  spans = sorted(set(zip(starts, stops)))
  lo, hi = spans[0][0], max(s for _, s in spans)
  covered = np.zeros(batch_size, bool)
  for s, e in spans:
    covered[s:e] = True
  if not covered[lo:hi].all():
    raise ValueError(f'this process holds non-contiguous rows {spans} of the '
                     'batch; order the mesh devices by process')
  return lo, hi


def put_rows(batch: dict, mesh, rules, rows: tuple[int, int],
             batch_size: int) -> dict:
  """This process's rows [start, stop) of a global batch -> global jax Arrays
  sharded over the batch axis (each device takes its rows from them)."""
  import jax  # pylint: disable=g-import-not-at-top
  from mgtil_jax.core import sharding  # pylint: disable=g-import-not-at-top

  def put(x):
    def local(index):
      start, stop, _ = index[0].indices(batch_size)
      return x[(slice(start - rows[0], stop - rows[0]),) + tuple(index[1:])]
    return jax.make_array_from_callback(
        (batch_size,) + x.shape[1:],
        sharding.batch_sharding(mesh, rules, x.ndim), local)
  return {k: put(np.asarray(v)) for k, v in batch.items()}


class TaskPipeline:
  """Endless batches of one task's training split.

  Iterating yields {'image': uint8[b, S, S, 3], 'label': int32[b]} with
  b = rows[1] - rows[0] (the whole global batch on one process).

  Args:
    task: a `TaskData` (only train_images / train_labels are read).
    batch_size: the GLOBAL batch size.
    seed, task_index: key the shuffle (see `stream_seed`).
    worker_count: grain worker processes (0 = in this process; the data is
      in memory here, so workers pay off only for heavy per-batch work).
    process_index, process_count: which slice of each global batch to load
      (default: this JAX process); or pass `rows` directly.
    prefetch: batches prepared ahead by a background thread (0 = none).
  """

  def __init__(self, task, batch_size: int, seed: int, task_index: int, *,
               worker_count: int = 0, process_index: int | None = None,
               process_count: int | None = None,
               rows: tuple[int, int] | None = None, prefetch: int = 2):
    n = len(task.train_labels)
    if n == 0:
      raise ValueError(f'task {task.name!r}: no training examples')
    self.rows = tuple(rows) if rows is not None else process_rows(
        batch_size, process_index, process_count)
    if not 0 <= self.rows[0] < self.rows[1] <= batch_size:
      raise ValueError(f'rows {self.rows} outside the global batch of '
                       f'{batch_size}')
    self._identity = {'task': task.name, 'examples': n,
                      'batch_size': batch_size, 'seed': seed,
                      'task_index': task_index}
    grain = _grain()
    # Element k is global batch k: a pure function of k, so the stream can
    # restart at any batch with any number of workers.
    self._batches = (
        grain.MapDataset.range(n)
        .shuffle(seed=stream_seed(seed, task_index))
        .repeat(None)
        .batch(batch_size, drop_remainder=True)
        .map(_GatherRows(task.train_images, task.train_labels, self.rows)))
    self._workers, self._prefetch = worker_count, prefetch
    self._iter, self._next_batch = None, 0

  def _open(self, next_batch: int):
    """Starts the stream at global batch `next_batch` (opened lazily, so a
    `set_state` right after construction starts no worker twice)."""
    self.close()
    grain = _grain()
    ds = self._batches[next_batch:].to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if self._workers > 0:
      from absl import flags  # pylint: disable=g-import-not-at-top
      if not flags.FLAGS.is_parsed():
        # grain's workers read its absl flags; outside an absl app (tests,
        # notebooks) nobody parsed them, so take their defaults.
        flags.FLAGS.mark_as_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self._workers,
          per_worker_buffer_size=max(1, self._prefetch)))
    elif self._prefetch > 0:
      ds = grain.experimental.ThreadPrefetchIterDataset(
          ds, prefetch_buffer_size=self._prefetch)
    self._iter = iter(ds)
    self._next_batch = next_batch

  def close(self):
    """Stops prefetch threads / worker processes."""
    if self._iter is not None and hasattr(self._iter, 'close'):
      self._iter.close()
    self._iter = None

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._iter is None:
      self._open(self._next_batch)
    batch = next(self._iter)
    self._next_batch += 1
    if self._workers > 0:
      # Own copies: worker batches arrive in shared memory that grain frees
      # with its iterator.
      batch = {k: np.array(v) for k, v in batch.items()}
    return batch

  def get_state(self) -> dict:
    """JSON-able position of the stream (plus what it belongs to, checked by
    `set_state`)."""
    return {'next_batch': self._next_batch, **self._identity}

  def set_state(self, state: dict):
    """Continues from a `get_state()` of a pipeline over the same task,
    global batch size and seed."""
    for key, value in self._identity.items():
      if state.get(key) != value:
        raise ValueError(f'pipeline state is for {key}={state.get(key)!r}, '
                         f'this pipeline has {key}={value!r}')
    self.close()
    self._next_batch = int(state['next_batch'])
