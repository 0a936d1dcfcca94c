"""Any `Source` + local folder -> a tensorflow-datasets dataset -> `TaskData`.

One generic tfds builder (`SourceBuilder`) turns a dataset reader into an
array_record dataset of square RGB images at a chosen size, cached under a
data_dir as `<data_dir>/mgtil_source/<source>-<S>px-seed<seed>-test<pct>/1.0.0`.
No TensorFlow is needed: tfds' `Image` feature encodes through TF, so images
are stored as PNG bytes encoded here with Pillow in a plain `Tensor(object)`
feature, and read back with tfds' TF-free `as_data_source()`.

The dataset metadata records everything that decides its content: image
size, resize rule, split seed and test fraction, split and label policies,
class names, domain, and the folder it was read from. A dataset whose
recorded folder, classes or domain no longer match its source is rebuilt.

`load_sources(data_cfg, cache_dir)` is the `'sources'` entry of
`benchmarks.LOADERS`: it checks every dataset folder first (one error naming each
missing folder, before anything is built), builds what is not built yet and
decodes each dataset into a `TaskData`.
"""

from __future__ import annotations

import concurrent.futures
import functools
import io
import logging
import os
import shutil

import numpy as np
from PIL import Image

from mgtil_jax.core import caches
from mgtil_jax.core import logs
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.data.sources import base

log = logging.getLogger(__name__)

BUILDER_NAME = 'mgtil_source'
RESIZE_RULE = ('shorter side resized to S (bicubic; JPEGs first decoded at '
               'the smallest DCT scale >= 2S), then centre-cropped to SxS; '
               'grey/RGBA/palette -> RGB; >8-bit images min-max scaled to '
               '0..255')


# ------------------------------------------------------------------ images --


def _to_pil(image, key: str) -> Image.Image:
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8:
      raise ValueError(f'example {key!r}: expected a uint8 image array, got '
                       f'{image.dtype}')
    if image.ndim == 3 and image.shape[-1] == 1:
      image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and
                                    image.shape[-1] not in (3, 4)):
      raise ValueError(f'example {key!r}: expected an image array of shape '
                       f'[H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got '
                       f'{image.shape}')
    return Image.fromarray(image)
  if isinstance(image, (bytes, bytearray)):
    return Image.open(io.BytesIO(image))
  if isinstance(image, (str, os.PathLike)):
    if not os.path.exists(image):
      raise FileNotFoundError(f'example {key!r}: image file {image} not found')
    return Image.open(image)
  raise TypeError(f'example {key!r}: expected a path, encoded bytes or a '
                  f'uint8 array, got {type(image).__name__}')


def to_rgb(image, size: int, key: str = '') -> np.ndarray:
  """Any supported image -> uint8[size, size, 3] (see `RESIZE_RULE`)."""
  try:
    img = _to_pil(image, key)
    if img.format == 'JPEG':
      # Decode at a reduced DCT scale that still leaves >= 2x the target
      # size: much faster for large photographs, and resized below anyway.
      img.draft('RGB', (2 * size, 2 * size))
    img.load()
  except FileNotFoundError:
    raise
  except (OSError, SyntaxError) as e:  # PIL's UnidentifiedImageError is OSError
    raise ValueError(f'example {key!r}: cannot decode the image ({e})') from e
  except Image.DecompressionBombError as e:  # more pixels than PIL will decode
    raise ValueError(f'example {key!r}: image refused as too large to decode '
                     f'({e})') from None
  if img.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):
    # 12/16-bit radiographs: stretch the stored range, as a viewer would.
    a = np.asarray(img, np.float64)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    img = Image.fromarray(np.round(a).astype(np.uint8))
  if img.mode in ('RGBA', 'LA', 'PA') or (img.mode == 'P' and
                                          'transparency' in img.info):
    # Transparent pixels become black, the background of medical images.
    rgba = img.convert('RGBA')
    img = Image.new('RGB', rgba.size)
    img.paste(rgba, mask=rgba.getchannel('A'))
  img = img.convert('RGB')
  w, h = img.size
  scale = size / min(w, h)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  if (new_w, new_h) != (w, h):
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
  left, top = (new_w - size) // 2, (new_h - size) // 2
  img = img.crop((left, top, left + size, top + size))
  return np.asarray(img, np.uint8)


def encode_png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG')
  return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as img:
    return np.asarray(img.convert('RGB'), np.uint8)


# ------------------------------------------------------------------ splits --


def checked_splits(source: base.Source, root: str, seed: int,
                   test_fraction: float) -> tuple[dict, str]:
  """`source.read(root)` checked, with a test split made when it has none.

  Returns ({split: [Example]}, split_policy). A source that returns only a
  'train' split gets a deterministic stratified test split
  (`base.stratified_split(keys, labels, test_fraction, seed)`).
  """
  splits = source.read(root)
  if not isinstance(splits, dict) or not splits.get('train'):
    raise ValueError(f'{source.name}: the reader returned no training '
                     f'examples from {root!r}')
  # Keys are unique over all splits: a key in two splits is a leak.
  n_classes = len(source.class_names)
  seen = set()
  for split, examples in splits.items():
    for e in examples:
      if not isinstance(e.label, (int, np.integer)) or not (
          0 <= e.label < n_classes):
        raise ValueError(f'{source.name}/{split}: example {e.key!r} has label '
                         f'{e.label!r}; expected an int in [0, {n_classes})')
      if e.key in seen:
        raise ValueError(f'{source.name}/{split}: duplicate key {e.key!r}')
      seen.add(e.key)
  policy = source.split_policy
  if not splits.get('test'):
    train = list(splits['train'])
    tr, te = base.stratified_split([e.key for e in train],
                                   [e.label for e in train], test_fraction,
                                   seed)
    splits = dict(splits, train=[train[i] for i in tr],
                  test=[train[i] for i in te])
    policy = (f'stratified by class: {test_fraction:g} of the examples to '
              f'test (seed {seed}, examples ordered by key)')
  return splits, policy


# ----------------------------------------------------------------- builder --


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def config_name(source_name: str, image_size: int, seed: int,
                test_fraction: float) -> str:
  return (f'{source_name}-{image_size}px-seed{seed}-'
          f'test{round(test_fraction * 100)}')


def _builder_class():
  """The tfds builder class, defined on first use so that importing this
  module does not import tensorflow_datasets."""
  global _BUILDER_CLASS
  if _BUILDER_CLASS is not None:
    return _BUILDER_CLASS
  tfds = _tfds()

  class SourceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A `Source` read from `root`, as PNG images of `image_size` px."""
    name = BUILDER_NAME
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'PNG bytes of square RGB images; keys kept.'}
    # tfds looks for a checksums file next to a builder's code, and that
    # lookup needs the `importlib_resources` backport, which tfds does not
    # declare; nothing is downloaded here, so there is no code path to search.
    code_path = None

    def __init__(self, *, source: base.Source, root: str, image_size: int,
                 seed: int = 0, test_fraction: float = 0.2,
                 num_threads: int = 8, **kwargs):
      self._source, self._root = source, os.path.abspath(root)
      self._size, self._seed = int(image_size), int(seed)
      self._test_fraction = float(test_fraction)
      self._threads = max(1, int(num_threads))
      self._split_policy = source.split_policy
      config = tfds.core.BuilderConfig(
          name=config_name(source.name, image_size, seed, test_fraction),
          description=f'{source.name} at {image_size}px')
      super().__init__(config=config, file_format='array_record', **kwargs)

    def _info(self):
      s = self._source
      return tfds.core.DatasetInfo(
          builder=self,
          description=f'{s.name} ({s.domain}), read from its native layout '
                      f'by mgtil_jax.',
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Tensor(shape=(), dtype=np.object_),
              'label': tfds.features.ClassLabel(names=list(s.class_names)),
              'key': tfds.features.Text(),
          }),
          homepage=s.homepage or None,
          citation=s.citation or None,
          metadata=tfds.core.MetadataDict(self.expected_metadata()))

    def expected_metadata(self) -> dict:
      s = self._source
      return dict(source=s.name, domain=s.domain,
                  class_names=list(s.class_names), image_size=self._size,
                  image_format='png', resize=RESIZE_RULE, seed=self._seed,
                  test_fraction=self._test_fraction,
                  split_policy=self._split_policy,
                  label_policy=s.label_policy, root=self._root)

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing is ever downloaded here
      splits, self._split_policy = checked_splits(
          self._source, self._root, self._seed, self._test_fraction)
      self.info.metadata['split_policy'] = self._split_policy
      return {name: self._generate_examples(examples)
              for name, examples in splits.items() if examples}

    def _generate_examples(self, examples):
      def encode(e):
        return e.key, {'image': encode_png(to_rgb(e.image, self._size, e.key)),
                       'label': int(e.label), 'key': e.key}
      # Pillow releases the GIL while decoding and resizing, so threads
      # overlap the work of large source images.
      chunk = 256 * self._threads
      with concurrent.futures.ThreadPoolExecutor(self._threads) as pool:
        for start in range(0, len(examples), chunk):
          yield from pool.map(encode, examples[start:start + chunk])

  _BUILDER_CLASS = SourceBuilder
  return SourceBuilder


_BUILDER_CLASS = None


def _quiet(fn):
  """`fn` with absl's WARNINGs muted and stdout swallowed, unless
  `launch.py --verbose`: tfds warns on every builder made from a config
  object ('Using custom data configuration'), which is how every dataset
  here is made, and prints 'Downloading and preparing dataset' even when
  the source files are local (mgtil_jax/core/logs.py)."""
  @functools.wraps(fn)
  def call(*args, **kwargs):
    if logs.is_verbose():
      return fn(*args, **kwargs)
    absl_logger = logging.getLogger('absl')
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    _tfds().disable_progress_bar()  # the project's bar stands for the build
    try:
      with logs.quiet_stdout():
        return fn(*args, **kwargs)
    finally:
      absl_logger.setLevel(level)
  return call


def _stale(builder) -> str:
  """Why an already prepared dataset no longer matches its source ('' if it
  does)."""
  stored = dict(builder.info.metadata or {})
  expected = builder.expected_metadata()
  for field in ('class_names', 'domain', 'root', 'image_size'):
    if stored.get(field) != expected[field]:
      return (f'{field} changed from {stored.get(field)!r} to '
              f'{expected[field]!r}')
  return ''


def build(source: base.Source, root: str, *, data_dir: str, image_size: int,
          seed: int = 0, test_fraction: float = 0.2, num_threads: int = 8,
          rebuild: bool = False):
  """Builds (once) and returns the tfds builder of `source` read from `root`.

  A dataset already built under `data_dir` is reused without reading `root`
  (so the raw files may be gone), unless its recorded folder, classes or
  domain differ from the source's or `rebuild` is set.
  """
  folder = os.path.join(data_dir, BUILDER_NAME, config_name(
      source.name, image_size, seed, test_fraction))
  # Two runs building one dataset build it once (core/caches.py); the lock
  # lives outside tfds' own folders, which list their dataset folders.
  with caches.cache_lock(os.path.join(data_dir, '.locks', os.path.basename(
      folder))):
    return _build_locked(source, root, data_dir=data_dir,
                         image_size=image_size, seed=seed,
                         test_fraction=test_fraction, num_threads=num_threads,
                         rebuild=rebuild, folder=folder)


def _build_locked(source, root, *, data_dir, image_size, seed, test_fraction,
                  num_threads, rebuild, folder):
  cls = _builder_class()
  make = lambda: _quiet(cls)(
      source=source, root=root, image_size=image_size, seed=seed,
      test_fraction=test_fraction, num_threads=num_threads,
      data_dir=data_dir)
  try:
    builder = make()
  except Exception as e:  # pylint: disable=broad-except
    # A prepared dataset whose dataset_info.json is corrupt: it is only a
    # cache of `root`, so remove it and build it again.
    if not os.path.isdir(folder):
      raise
    log.warning('%s: the prepared dataset %s is unreadable (%s: %s); '
                'rebuilding it', source.name, folder, type(e).__name__, e)
    shutil.rmtree(folder)
    builder = make()
  if builder.is_prepared():
    reason = 'rebuild requested' if rebuild else _stale(builder)
    if not reason:
      return builder
    log.warning('%s: rebuilding %s (%s)', source.name, builder.data_dir,
                reason)
    shutil.rmtree(builder.data_dir)
    builder = make()
  with logs.progress(None, total=1, desc=f'build dataset {source.name}',
                     leave=False) as bar:
    _quiet(builder.download_and_prepare)()
    bar.update(1)
  return builder


def read_split(builder, split: str, num_threads: int = 8):
  """(uint8[N, S, S, 3], int32[N], keys) of one split, ordered by key, so the
  order never depends on tfds' shuffling of the records."""
  ds = builder.as_data_source(split=split)
  records = ds.__getitems__(list(range(len(ds)))) if len(ds) else []
  keys = [r['key'].decode() if isinstance(r['key'], bytes) else str(r['key'])
          for r in records]
  order = np.argsort(np.asarray(keys, dtype=object), kind='stable')
  size = builder.info.metadata['image_size']
  images = np.empty((len(records), size, size, 3), np.uint8)

  def decode(i):
    images[i] = decode_png(records[order[i]]['image'])
  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    for _ in pool.map(decode, range(len(records)), chunksize=256):
      pass
  labels = np.asarray([records[j]['label'] for j in order], np.int32)
  return images, labels, [keys[j] for j in order]


def load_task(builder, name: str | None = None, num_threads: int = 8):
  """The built dataset as the trainer's `TaskData` (train and test splits)."""
  from mgtil_jax.data import tasks  # pylint: disable=g-import-not-at-top
  meta = builder.info.metadata
  tr_x, tr_y, _ = read_split(builder, 'train', num_threads)
  te_x, te_y, _ = read_split(builder, 'test', num_threads)
  return tasks.TaskData(name or meta['source'], meta['domain'],
                        tuple(meta['class_names']), tr_x, tr_y, te_x, te_y)


# ------------------------------------------------------------------ loader --


def _import_readers():
  """Registers every reader module this branch knows of; the MGTIL readers
  register through the package's `__init__`."""
  # pylint: disable=g-import-not-at-top,unused-import
  import mgtil_jax.data.sources
  from mgtil_jax.data.sources import byo, medmnist, medpix, vqa_rad


def data_dir_of(data_cfg, cache_dir: str | None) -> str:
  d = data_cfg.get('data_dir') or (os.path.join(cache_dir, 'tfds')
                                   if cache_dir else '')
  if not d:
    raise ValueError('config.data.data_dir: empty and no cache directory; '
                     'say where the built datasets go')
  return os.path.abspath(os.path.expanduser(d))


def _missing(name: str, folder: str, source: base.Source | None) -> str:
  hint = (f' (get it from {source.homepage})'
          if source is not None and source.homepage else '')
  layout = ('\n    expected layout:\n      ' +
            source.layout.strip().replace('\n', '\n      ')
            if source is not None and source.layout else '')
  return f'  {name}: dataset folder {folder} does not exist{hint}{layout}'


def resolve(data_cfg, cache_dir: str | None = None
            ) -> list[tuple[str, base.Source, str]]:
  """[(task name, Source, dataset folder)] in task order; fails before
  anything is built or trained, with one error that names every missing
  dataset folder (a dataset already built under the data_dir needs none).

  `data_cfg.sources` names registered sources, or entries of
  `data_cfg.custom` (bring-your-own datasets, see `sources.byo`); each is read
  from `os.path.join(data_cfg.root, data_cfg.folders.get(name, name))` (an
  absolute folder replaces root).
  """
  _import_readers()
  from mgtil_jax.data.sources import byo  # pylint: disable=g-import-not-at-top
  names = data_cfg.get('sources')
  if isinstance(names, str):
    names = tuple(n for n in names.split('+') if n)
  if not names:
    raise ValueError("config.data.sources: expected registry names of the "
                     f"datasets in task order, got {names!r}")
  names = tasks_lib.first_tasks(tuple(names), data_cfg)
  custom = dict(data_cfg.get('custom') or {})
  folders = dict(data_cfg.get('folders') or {})
  root = os.path.expanduser(data_cfg.get('root') or '')
  data_dir = data_dir_of(data_cfg, cache_dir)
  out, missing = [], []
  for name in names:
    folder = os.path.join(root, os.path.expanduser(folders.get(name, name)))
    if not os.path.isabs(folder) and not root:
      raise ValueError(f'config.data.root: empty, and the folder of {name!r} '
                       f'({folder!r}) is not absolute; pass the data root '
                       '(e.g. root=/data/mgtil)')
    if name in custom:
      if not os.path.isdir(folder):
        missing.append(_missing(name, folder, None))
        continue
      source = byo.source_from_config(name, custom[name], folder)
    elif name not in base.SOURCES:
      if os.path.isdir(folder):
        raise ValueError(f'config.data.sources: no reader registered as '
                         f'{name!r}; expected one of {sorted(base.SOURCES)}')
      # Both wrong; the folder is what a user most often has to fix.
      missing.append(_missing(name, folder, None) +
                     ' (and no reader is registered under this name)')
      continue
    else:
      source = base.get_source(name)
      if not os.path.isdir(folder) and not _builder(
          source, folder, data_cfg, data_dir).is_prepared():
        missing.append(_missing(name, folder, source))
    out.append((name, source, folder))
  if missing:
    raise base.LayoutError(
        'config.data: missing dataset folders (set config.data.root or '
        'config.data.folders):\n' + '\n'.join(missing))
  return out


validate = resolve


def _builder(source, folder, data_cfg, data_dir):
  return _quiet(_builder_class())(
      source=source, root=folder, image_size=data_cfg.image_size,
      seed=data_cfg.get('seed', 0),
      test_fraction=data_cfg.get('test_fraction', 0.2),
      num_threads=data_cfg.get('build_threads', 8), data_dir=data_dir)


def load_sources(data_cfg, cache_dir: str | None):
  """`benchmarks.LOADERS['sources']`: builds (if needed) and loads every task."""
  entries = resolve(data_cfg, cache_dir)
  data_dir = data_dir_of(data_cfg, cache_dir)
  out = []
  for name, source, folder in entries:
    options = dict(data_dir=data_dir, image_size=data_cfg.image_size,
                   seed=data_cfg.get('seed', 0),
                   test_fraction=data_cfg.get('test_fraction', 0.2),
                   num_threads=data_cfg.get('build_threads', 8))
    builder = build(source, folder, **options)
    try:
      task = load_task(builder, name, data_cfg.get('build_threads', 8))
    except Exception as e:  # pylint: disable=broad-except
      # Truncated / corrupt records of the cache: rebuild from `folder`.
      log.warning('%s: the prepared dataset %s is unreadable (%s: %s); '
                  'rebuilding it', name, builder.data_dir, type(e).__name__, e)
      builder = build(source, folder, rebuild=True, **options)
      task = load_task(builder, name, data_cfg.get('build_threads', 8))
    out.append(task)
  return out


def main(argv=None):
  """`python -m mgtil_jax.data.builder` lists the readers and their layouts,
  or builds one dataset."""
  import argparse  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=main.__doc__)
  p.add_argument('--list', action='store_true', help='list registered sources')
  p.add_argument('--source', help='registry name of the dataset to build')
  p.add_argument('--root', help='its folder')
  p.add_argument('--data_dir', default='~/tensorflow_datasets')
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--test_fraction', type=float, default=0.2)
  args = p.parse_args(argv)
  _import_readers()
  if args.list or not args.source:
    for name, s in sorted(base.SOURCES.items()):
      print(f'{name:24s} {s.domain:12s} {len(s.class_names):3d} classes  '
            f'{s.homepage}')
      if s.layout:
        print('    ' + s.layout.strip().replace('\n', '\n    '))
    return
  b = build(base.get_source(args.source), args.root,
            data_dir=os.path.expanduser(args.data_dir),
            image_size=args.image_size, seed=args.seed,
            test_fraction=args.test_fraction)
  print(b.data_dir)
  print({k: v.num_examples for k, v in b.info.splits.items()})


if __name__ == '__main__':
  main()
