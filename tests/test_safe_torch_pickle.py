"""A crafted pickle cannot change the safe unpickler's stand-ins: BUILD on
an allowed global is refused, and a later load in the same process is
unaffected (python-pickle opcodes written out by hand below)."""

import pathlib
import struct
import zipfile

import numpy as np
import pytest

from mgtil_jax.models import safe_torch_pickle

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'biomedclip_tiny'


def _unicode(text: str) -> bytes:
  raw = text.encode()
  return b'X' + struct.pack('<I', len(raw)) + raw  # BINUNICODE


def _build_pickle(module: str, name: str, slots: bool) -> bytes:
  """PROTO 2; GLOBAL module.name; BUILD with {'dtype': 'poison'} as its
  __dict__ state (or as slot state), then STOP. ~60-70 bytes."""
  state = b'}' + _unicode('dtype') + _unicode('poison') + b's'  # {k: v}
  if slots:  # (None, {...}): BUILD sets the attributes one by one
    state = b'N' + state + b'\x86'  # TUPLE2
  return (b'\x80\x02c' + f'{module}\n{name}\n'.encode() + state + b'b.')


def _zip(path, data: bytes):
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', data)
    z.writestr('archive/byteorder', 'little')
  return str(path)


@pytest.mark.parametrize('slots', [False, True])
@pytest.mark.parametrize('target', [
    ('torch', 'FloatStorage'), ('torch._utils', '_rebuild_tensor_v2'),
    ('torch._utils', '_rebuild_parameter'), ('collections', 'OrderedDict')])
def test_build_cannot_poison_later_loads(tmp_path, target, slots):
  data = _build_pickle(*target, slots)
  assert len(data) < 100
  with pytest.raises(safe_torch_pickle.UnsafeCheckpointError) as info:
    safe_torch_pickle.load(_zip(tmp_path / 'evil.bin', data))
  assert 'evil.bin' in str(info.value)
  # The stand-ins are untouched: a real torch.save file still loads.
  got = safe_torch_pickle.load(str(FIXTURE / 'torch_dtypes.bin'))
  with np.load(FIXTURE / 'torch_dtypes.npz') as ref:
    np.testing.assert_array_equal(got['float32'], ref['float32'])


def test_every_reference_gets_a_fresh_stand_in():
  # pylint: disable=protected-access
  make = safe_torch_pickle._ALLOWED[('torch', 'FloatStorage')]
  assert make() is not make()
  with pytest.raises(AttributeError):
    make().dtype = np.dtype('int8')
