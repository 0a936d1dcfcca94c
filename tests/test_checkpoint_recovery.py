"""What a killed or broken run leaves behind: a corrupt latest checkpoint
falls back to the previous one, half-deleted step folders are removed, a
non-finite state is never saved, a corrupt data cache is rebuilt."""

import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgtil_jax.training import checkpoint
from mgtil_jax.data import tasks


def _state(value):
  return {'params': {'w': jnp.full((4, 3), value, jnp.float32)},
          'opt': {'count': jnp.asarray(1, jnp.int32)}}


def _abstract():
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      _state(0))


def _saved(directory, steps=(1, 2), keep=3):
  ckpt = checkpoint.Checkpointer(str(directory), keep=keep)
  for s in steps:
    ckpt.save(s, _state(s), {'task': 0, 'step': s})
  ckpt.close()


def _corrupt(step_dir):
  """Overwrites every data file of the state with garbage."""
  for base, _, files in os.walk(os.path.join(step_dir, 'state')):
    for f in files:
      with open(os.path.join(base, f), 'wb') as fh:
        fh.write(b'\x00garbage')


def test_corrupt_latest_falls_back_with_a_warning(tmp_path, caplog):
  directory = tmp_path / 'checkpoints'
  _saved(directory)
  _corrupt(directory / '2')
  ckpt = checkpoint.Checkpointer(str(directory), keep=3)
  assert ckpt.latest_step() == 2
  with caplog.at_level(logging.WARNING):
    state, meta = ckpt.restore(2, _abstract())
  assert meta['step'] == 1
  np.testing.assert_array_equal(state['params']['w'], np.ones((4, 3)))
  assert str(directory / '2') in caplog.text and 'step 1' in caplog.text
  # Moved aside, not deleted; the run saves step 2 again without a clash.
  assert ckpt.latest_step() == 1
  assert os.listdir(str(directory) + '_corrupt')
  ckpt.save(2, _state(5), {'task': 0, 'step': 2})
  ckpt.close()


def test_no_readable_checkpoint_is_one_clear_error(tmp_path):
  directory = tmp_path / 'checkpoints'
  _saved(directory, steps=(1,))
  _corrupt(directory / '1')
  ckpt = checkpoint.Checkpointer(str(directory))
  with pytest.raises(checkpoint.UserError, match='no readable checkpoint'):
    ckpt.restore(1, _abstract())
  assert (directory / '1').exists()  # nothing moved when nothing is readable
  ckpt.close()


def test_half_deleted_step_folder_is_removed(tmp_path):
  directory = tmp_path / 'checkpoints'
  _saved(directory, steps=(1, 2, 3))
  # A kill during orbax's deletion of step 1: some files already gone.
  os.remove(directory / '1' / '_CHECKPOINT_METADATA')
  shutil.rmtree(directory / '1' / 'meta')
  ckpt = checkpoint.Checkpointer(str(directory), keep=3)
  assert not (directory / '1').exists()
  assert ckpt.latest_step() == 3
  state, meta = ckpt.restore(3, _abstract())
  assert meta['step'] == 3
  ckpt.close()


def test_non_finite_params_are_never_saved(tmp_path):
  directory = tmp_path / 'checkpoints'
  ckpt = checkpoint.Checkpointer(str(directory))
  ckpt.save(1, _state(1), {'task': 0, 'step': 1})
  with pytest.raises(checkpoint.DivergedError, match='task 1, step 2'):
    ckpt.save(2, _state(float('nan')), {'task': 0, 'step': 2})
  ckpt.close()
  assert ckpt.latest_step() == 1


def test_check_finite_names_the_step():
  checkpoint.check_finite({'loss': np.float32(0.5)}, 'task 1 step 4')
  with pytest.raises(checkpoint.DivergedError, match='task 2 step 6'):
    checkpoint.check_finite({'loss': np.float32('nan')}, 'task 2 step 6')


def test_finish_all_waits_for_in_flight_saves(tmp_path):
  directory = tmp_path / 'checkpoints'
  ckpt = checkpoint.Checkpointer(str(directory))
  ckpt.save(7, _state(7), {'task': 0, 'step': 7})  # async
  checkpoint.finish_all()
  assert (directory / '7' / '_CHECKPOINT_METADATA').exists()


@pytest.mark.parametrize('damage', [b'', b'PK\x03\x04garbage', b'\x93NUMPY'])
def test_corrupt_data_cache_is_rebuilt(tmp_path, damage, caplog):
  path = str(tmp_path / 'task.npz')
  calls = []

  def build():
    calls.append(1)
    return {'x': np.arange(3)}

  tasks._cached(path, 'k', build)  # pylint: disable=protected-access
  with open(path, 'wb') as f:
    f.write(damage)
  with caplog.at_level(logging.WARNING):
    out = tasks._cached(path, 'k', build)  # pylint: disable=protected-access
  np.testing.assert_array_equal(out['x'], np.arange(3))
  assert len(calls) == 2 and path in caplog.text
  again = tasks._cached(path, 'k', build)  # pylint: disable=protected-access
  assert again['x'].tolist() == [0, 1, 2]
  assert len(calls) == 2  # the rebuilt cache is read back


def _format_in_a_thread_during_lazy_import(limits):
  """Formats a byte count the way orbax's save threads do, while the main
  thread is inside etils' `epy.lazy_imports()` (as tensorflow_datasets is
  while its modules import): returns the text or the error."""
  import threading  # pylint: disable=g-import-not-at-top
  from etils import epy  # pylint: disable=g-import-not-at-top
  out = []

  def fmt():
    try:
      out.append(limits.humanize.naturalsize(123456789, binary=True))
    except Exception as e:  # pylint: disable=broad-except
      out.append(e)

  with epy.lazy_imports():
    t = threading.Thread(target=fmt)
    t.start()
    t.join()
  return out[0]


def test_save_threads_survive_a_lazy_import_elsewhere(tmp_path, monkeypatch):
  # The crash seen in a PRIMED run: the step-0 save's thread formatted a byte
  # count while the retrieval reader imported tensorflow_datasets. With the
  # real humanize the race raises; with checkpoint's guard it cannot.
  import humanize  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.serialization import limits  # pylint: disable=g-import-not-at-top
  with monkeypatch.context() as m:
    m.setattr(limits, 'humanize', humanize)
    err = _format_in_a_thread_during_lazy_import(limits)
    if not isinstance(err, str):  # humanize 4.x imports math at call time
      assert isinstance(err, TypeError) and 'LazyModule' in str(err)
  assert _format_in_a_thread_during_lazy_import(limits) == '123456789 B'
  # A whole save and restore still work with the guard in place.
  _saved(tmp_path / 'ck', steps=(5,))
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ck'))
  state, meta = ckpt.restore(5, _abstract())
  ckpt.close()
  assert meta['step'] == 5
  np.testing.assert_array_equal(state['params']['w'], np.full((4, 3), 5.0))
