"""Reads PyTorch `.bin`/`.pt` state dicts into NumPy without torch and
without running pickled code.

A torch checkpoint (`torch.save`, format of torch >= 1.6) is a zip archive:
`<name>/data.pkl` is a pickle whose tensors are calls to
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and whose
storages are persistent ids `('storage', torch.FloatStorage, key, device,
numel)` pointing at the raw little-endian bytes in `<name>/data/<key>`.

A pickle can name any importable callable and have the unpickler call it, so
`pickle.load` on a downloaded file runs whatever its author chose. Here the
unpickler resolves only a fixed allow-list of names, each to a harmless
stand-in defined in this module (plain dicts, NumPy arrays); any other global
(`os.system`, `builtins.eval`, ...) is refused with `UnsafeCheckpointError`
before anything is called. The same idea as `torch.load(weights_only=True)`,
with no torch import.

The pre-1.6 (non-zip) torch format and TorchScript archives are refused with
the one command that converts them to safetensors.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np

from mgtil_jax.core import errors

# torch storage class name -> NumPy dtype of its elements.
_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32,
    'HalfStorage': np.float16, 'BFloat16Storage': ml_dtypes.bfloat16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}


def convert_command(path: str) -> str:
  """The one command (needs torch and safetensors) that converts a torch
  checkpoint to safetensors with torch's own safe loader."""
  out = os.path.splitext(path)[0] + '.safetensors'
  return (
      'python -c "import torch; from safetensors.torch import save_file; '
      f"sd = torch.load({path!r}, map_location='cpu', weights_only=True); "
      "sd = sd.get('state_dict', sd); "
      'save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, '
      f'{out!r})"')


class UnsafeCheckpointError(pickle.UnpicklingError, errors.UserError):
  """The pickle names something other than tensors, storages and dicts."""


class _StorageType:
  """Stand-in for `torch.FloatStorage` etc.: only carries the dtype.

  Immutable (no `__dict__`, no settable slots): a pickle's BUILD opcode on it
  fails instead of changing it. And `find_class` hands out a fresh one per
  reference, so nothing a pickle does outlives its own load."""
  __slots__ = ('name', 'dtype')

  def __init__(self, name: str):
    object.__setattr__(self, 'name', name)
    object.__setattr__(self, 'dtype', np.dtype(_STORAGE_DTYPES[name]))

  def __setattr__(self, key, value):
    raise AttributeError(f'{type(self).__name__} is immutable')

  __delattr__ = __setattr__


class _Callable:
  """A stand-in callable with no `__dict__` and no state: BUILD on it fails,
  so the module's functions themselves are never handed to a pickle."""
  __slots__ = ('_fn',)

  def __init__(self, fn):
    object.__setattr__(self, '_fn', fn)

  def __call__(self, *args, **kwargs):
    return self._fn(*args, **kwargs)

  def __setattr__(self, key, value):
    raise AttributeError(f'{type(self).__name__} is immutable')

  __delattr__ = __setattr__


def _rebuild_tensor_v2(storage, storage_offset, size, stride,
                       requires_grad=False, backward_hooks=None,
                       metadata=None):
  """Stand-in for torch._utils._rebuild_tensor_v2: a strided view of the
  storage's elements, copied to a fresh C-contiguous array."""
  del requires_grad, backward_hooks, metadata
  size, stride = tuple(size), tuple(stride)
  if len(size) != len(stride):
    raise UnsafeCheckpointError(f'tensor size {size} and stride {stride} '
                                'differ in rank')
  if any(s < 0 for s in size) or any(s < 0 for s in stride):
    raise UnsafeCheckpointError(f'negative tensor size/stride {size}/{stride}')
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  if storage_offset < 0 or last >= storage.size:
    raise UnsafeCheckpointError(
        f'tensor (offset {storage_offset}, size {size}, stride {stride}) '
        f'reads past its storage of {storage.size} elements')
  item = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=size,
      strides=tuple(s * item for s in stride), writeable=False)
  return np.array(view, copy=True, order='C')


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  """Stand-in for torch._utils._rebuild_parameter: the tensor itself."""
  del requires_grad, backward_hooks
  return data


# (module, name) -> a factory of the object the unpickler may hand to
# REDUCE/BUILD: a fresh, immutable one per reference.
_ALLOWED = {
    # A class: BUILD on it fails (its __dict__ is a read-only mappingproxy).
    ('collections', 'OrderedDict'): lambda: collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'):
        lambda: _Callable(_rebuild_tensor_v2),
    ('torch._utils', '_rebuild_parameter'):
        lambda: _Callable(_rebuild_parameter),
}
_ALLOWED.update({('torch', name): (lambda name=name: _StorageType(name))
                 for name in _STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the allow-listed globals; storages come from the zip."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str,
               byteorder: str, source: str):
    super().__init__(file)
    self._archive = archive
    self._prefix = prefix
    self._byteorder = byteorder
    self._source = source
    self._storages = {}

  def find_class(self, module, name):
    try:
      return _ALLOWED[(module, name)]()
    except KeyError:
      raise UnsafeCheckpointError(
          f'{self._source}: refusing to load: the pickle references '
          f'{module}.{name}, which is not a tensor, storage or dict. It may '
          'run arbitrary code, so it was not called. If you trust the file, '
          f'convert it with torch:\n  {convert_command(self._source)}'
      ) from None

  def persistent_load(self, pid):
    if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != 'storage'
        or not isinstance(pid[1], _StorageType)):
      raise UnsafeCheckpointError(
          f'{self._source}: unexpected persistent id {pid!r} (expected '
          "('storage', <dtype>Storage, key, device, numel))")
    _, storage_type, key, _, numel = pid
    if key not in self._storages:
      name = f'{self._prefix}data/{key}'
      try:
        raw = self._archive.read(name)
      except KeyError:
        raise UnsafeCheckpointError(
            f'{self._source}: storage {name} is missing from the archive'
        ) from None
      dtype = storage_type.dtype.newbyteorder(
          '>' if self._byteorder == 'big' else '<')
      if len(raw) < numel * dtype.itemsize:
        raise UnsafeCheckpointError(
            f'{self._source}: storage {name} has {len(raw)} bytes, expected '
            f'{numel} x {dtype.itemsize}')
      array = np.frombuffer(raw, dtype, count=numel)
      self._storages[key] = array.astype(array.dtype.newbyteorder('='))
    return self._storages[key]


def load(path: str) -> dict:
  """The object `torch.save` wrote (normally a `{name: tensor}` state dict),
  with every tensor as a NumPy array (bfloat16 as `ml_dtypes.bfloat16`).

  Raises `UnsafeCheckpointError` if the pickle references anything besides
  tensors, storages and (ordered) dicts; `ValueError` for formats other than
  torch's zip format (with the command that converts them).
  """
  if not zipfile.is_zipfile(path):
    raise ValueError(
        f'{path}: not a torch zip checkpoint (torch >= 1.6 format). The old '
        'pickle-only format cannot be read without running its pickle; '
        f'convert it with torch:\n  {convert_command(path)}')
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('data.pkl')]
    if len(pickles) != 1 or pickles[0].count('/') != 1:
      kind = ('a TorchScript archive' if any(
          n.endswith('constants.pkl') for n in archive.namelist())
              else 'not a torch checkpoint')
      raise ValueError(
          f'{path}: {kind} (expected exactly one <name>/data.pkl, found '
          f'{pickles}). Convert it with torch:\n  {convert_command(path)}')
    prefix = pickles[0][:-len('data.pkl')]
    try:
      byteorder = archive.read(prefix + 'byteorder').decode().strip()
    except KeyError:
      byteorder = 'little'  # torch writes no byteorder file before 1.12
    with archive.open(pickles[0]) as f:
      try:
        return _RestrictedUnpickler(f, archive, prefix, byteorder,
                                    path).load()
      except UnsafeCheckpointError:
        raise
      except (AttributeError, TypeError) as e:  # e.g. BUILD on a stand-in
        raise UnsafeCheckpointError(
            f'{path}: refusing to load: the pickle tries to modify an '
            f'allowed object ({e})') from None
