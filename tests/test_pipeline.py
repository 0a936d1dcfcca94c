"""Tests for mgtil_jax.data.pipeline: the grain task pipeline resumes where
it stopped, splits each global batch over processes, and visits every
example once per epoch."""

import json

import numpy as np
import pytest

from mgtil_jax.data import pipeline
from mgtil_jax.data.tasks import TaskData

N = 23  # not a multiple of the batch size: batches run across epochs


def _task(n=N, name='toy'):
  # Image i is filled with i, so a batch's images say which examples it holds.
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None],
                           (n, 2, 2, 3)).copy()
  return TaskData(name, 'd', ('a', 'b'), images,
                  np.arange(n, dtype=np.int32), images[:0],
                  np.zeros(0, np.int32))


def _take(pipe, k):
  out = [next(pipe) for _ in range(k)]
  for b in out:  # images and labels stay paired
    np.testing.assert_array_equal(b['image'][:, 0, 0, 0], b['label'])
  return [b['label'] for b in out]


def test_resumed_iterator_continues_identically():
  pipe = pipeline.TaskPipeline(_task(), 8, seed=5, task_index=2,
                               process_index=0, process_count=1)
  reference = _take(pipe, 12)
  pipe.close()

  first = pipeline.TaskPipeline(_task(), 8, seed=5, task_index=2,
                                process_index=0, process_count=1)
  _take(first, 7)
  state = json.loads(json.dumps(first.get_state()))  # as the checkpoint has it
  first.close()
  resumed = pipeline.TaskPipeline(_task(), 8, seed=5, task_index=2,
                                  process_index=0, process_count=1)
  resumed.set_state(state)
  rest = _take(resumed, 5)
  resumed.close()
  for a, b in zip(reference[7:], rest):
    np.testing.assert_array_equal(a, b)


def test_state_belongs_to_its_stream():
  pipe = pipeline.TaskPipeline(_task(), 8, seed=5, task_index=2,
                               process_index=0, process_count=1)
  state = pipe.get_state()
  other = pipeline.TaskPipeline(_task(), 4, seed=5, task_index=2,
                                process_index=0, process_count=1)
  with pytest.raises(ValueError, match='batch_size'):
    other.set_state(state)


def test_two_hosts_together_load_the_global_batch():
  one = pipeline.TaskPipeline(_task(), 8, seed=1, task_index=0,
                              process_index=0, process_count=1)
  hosts = [pipeline.TaskPipeline(_task(), 8, seed=1, task_index=0,
                                 process_index=p, process_count=2)
           for p in range(2)]
  for _ in range(6):
    whole = next(one)
    parts = [next(h) for h in hosts]
    assert parts[0]['label'].shape == (4,)
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([p[key] for p in parts]), whole[key])
  with pytest.raises(ValueError, match='does not divide'):
    pipeline.process_rows(6, 0, 4)


def test_each_epoch_is_a_permutation_and_epochs_differ():
  pipe = pipeline.TaskPipeline(_task(), 8, seed=0, task_index=0,
                               process_index=0, process_count=1)
  stream = np.concatenate(_take(pipe, 3 * N // 8 + 1))  # > 3 epochs
  epochs = [stream[e * N:(e + 1) * N] for e in range(3)]
  for e in epochs:
    assert sorted(e.tolist()) == list(range(N))
  assert not np.array_equal(epochs[0], epochs[1])
  # Other tasks of the same run draw other orders.
  other = pipeline.TaskPipeline(_task(), 8, seed=0, task_index=1,
                                process_index=0, process_count=1)
  assert not np.array_equal(np.concatenate(_take(other, 3))[:N], epochs[0])


def test_worker_processes_give_the_same_batches():
  plain = pipeline.TaskPipeline(_task(), 8, seed=4, task_index=0,
                                process_index=0, process_count=1)
  reference = _take(plain, 6)
  workers = pipeline.TaskPipeline(_task(), 8, seed=4, task_index=0,
                                  process_index=0, process_count=1,
                                  worker_count=2)
  try:
    got = _take(workers, 3)
    state = workers.get_state()
  finally:
    workers.close()
  # ...and a state taken with workers resumes without them.
  plain.set_state(state)
  got += _take(plain, 3)
  plain.close()
  for a, b in zip(reference, got):
    np.testing.assert_array_equal(a, b)


def test_rows_of_a_one_device_sharding_and_placement():
  import jax  # pylint: disable=g-import-not-at-top
  from mgtil_jax.core import sharding  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  rules = sharding.rules_from_config(common.SHARDING_RULES)
  rows = pipeline.rows_of_sharding(sharding.batch_sharding(mesh, rules, 1), 8)
  assert rows == (0, 8)
  batch = next(pipeline.TaskPipeline(_task(), 8, seed=0, task_index=0,
                                     rows=rows, prefetch=0))
  placed = pipeline.put_rows(batch, mesh, rules, rows, 8)
  assert isinstance(placed['image'], jax.Array)
  np.testing.assert_array_equal(np.asarray(placed['label']), batch['label'])
