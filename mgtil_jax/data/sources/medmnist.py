"""MedMNIST v2 / MedMNIST+ (all 12 2D subsets at 28, 64, 128 and 224 px).

Reads the official `.npz` files from a local folder (the folder `medmnist`
itself downloads to, `~/.medmnist` by default):

    <root>/<flag>.npz          28 px
    <root>/<flag>_64.npz       64 px  (likewise _128, _224)

each holding `{train,val,test}_images` uint8[N, H, W(, 3)] and
`{train,val,test}_labels` [N, 1] (or [N], as re-saved copies have it;
[N, 14] for ChestMNIST). Every file is checked against the MD5 of the
official release (MedMNIST 3.0.2 `INFO`); a mismatch (a re-saved or modified
copy) is a warning, not an error, and the file is used as it is.

Registered sources: `<flag>` (28 px) and `<flag>_<size>` for 64/128/224, e.g.
`pneumoniamnist`, `pneumoniamnist_224`. Official train/val/test splits.
Nothing is downloaded unless `download(flag, size, root)` is called (or
`python -m mgtil_jax.data.sources.medmnist --download FLAG --size S --root D`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import urllib.error
import urllib.request
import warnings
import zipfile

import numpy as np

from mgtil_jax.core import errors
from mgtil_jax.data.sources.base import (Example, LayoutError, Source,
                                         register)

HOMEPAGE = 'https://medmnist.com/'
CITATION = ('Yang J. et al., "MedMNIST v2 - A large-scale lightweight '
            'benchmark for 2D and 3D biomedical image classification", '
            'Scientific Data 10:41 (2023).')
URL = 'https://zenodo.org/records/10519652/files/{file}?download=1'
SIZES = (28, 64, 128, 224)

# MD5 of the official files by size, from MedMNIST's own `medmnist/info.py`
# (version 3.0.2, keys MD5, MD5_64, MD5_128, MD5_224).
MD5 = {
    'pathmnist': ('a8b06965200029087d5bd730944a56c1',
                  '55aa9c1e0525abe5a6b9d8343a507616',
                  'ac42d08fb904d92c244187169d1fd1d9',
                  '2c51a510bcdc9cf8ddb2af93af1eadec'),
    'chestmnist': ('02c8a6516a18b556561a56cbdd36c4a8',
                   '9de6cd0b934ebb5b7426cfba5efbae16',
                   'db107e5590b27930b62dbaf558aebee3',
                   '45bd33e6f06c3e8cdb481c74a89152aa'),
    'dermamnist': ('0744692d530f8e62ec473284d019b0c7',
                   'b70a2f5635c6199aeaa28c31d7202e1f',
                   '2defd784463fa5243564e855ed717de1',
                   '8974907d8e169bef5f5b96bc506ae45d'),
    'octmnist': ('c68d92d5b585d8d81f7112f81e2d0842',
                 'e229e9440236b774d9f0dfef9d07bdaf',
                 '0a97e76651ace45c5d943ee3f65b63ae',
                 'abc493b6d529d5de7569faaef2773ba3'),
    'pneumoniamnist': ('28209eda62fecd6e6a2d98b1501bb15f',
                       '8f4eceb4ccffa70c672198ea285246c6',
                       '05b46931834c231683c68f40c47b2971',
                       'd6a3c71de1b945ea11211b03746c1fe1'),
    'retinamnist': ('bd4c0672f1bba3e3a89f0e4e876791e4',
                    'afda852cc34dcda56f86ad2b2457dbcc',
                    'e48e916a24454daf90583d4e6efb1a18',
                    'eae7e3b6f3fcbda4ae613ebdcbe35348'),
    'breastmnist': ('750601b1f35ba3300ea97c75c52ff8f6',
                    '742edef2a1fd1524b2efff4bd7ba9364',
                    '363e4b3f8d712e9b5de15470a2aaadf1',
                    'b56378a6eefa9fed602bb16d192d4c8b'),
    'bloodmnist': ('7053d0359d879ad8a5505303e11de1dc',
                   '2b94928a2ae4916078ca51e05b6b800b',
                   'adace1e0ed228fccda1f39692059dd4c',
                   'b718ff6835fcbdb22ba9eacccd7b2601'),
    'tissuemnist': ('ebe78ee8b05294063de985d821c1c34b',
                    '123ece2eba09d0aa5d698fda57103344',
                    '61b955355d7425a89687b06cca3ce0c2',
                    'b077128c4a949f0a4eb01517f9037b9c'),
    'organamnist': ('68e3f8846a6bd62f0c9bf841c0d9eacc',
                    '2dcccc29b88e6da5a01161ef20cda288',
                    'eeae80d0a227a8d099027e1b3cfd3b60',
                    '50747347e05c87dd3aaf92c49f9f3170'),
    'organcmnist': ('b9ceb9546e10131b32923c5bbeaea2b1',
                    '3ce34a8724ea6f548e6db4744d03b6a9',
                    '773c1f009daa3fe5d9a2a201b2a7ed94',
                    '050f5e875dc056f6768abf94ec9995d1'),
    'organsmnist': ('9ab87b696fb54e2a387ebe992d6ed5f1',
                    '53a6d115339d874c25e309a994ff46d3',
                    'ded0c5fa01a95dc4978b956f613e9b8e',
                    'b354719e553fbbb2513d5533f52a4cb1'),
}

_ORGANS = ('bladder', 'left femur', 'right femur', 'heart', 'left kidney',
           'right kidney', 'liver', 'left lung', 'right lung', 'pancreas',
           'spleen')

# Class names, index = label: MedMNIST's label dicts, written as the phrases a
# prompt reads ("a photo of {}"): bare words such as 'normal' or grade
# numbers become the finding they stand for; 'femur-left' -> 'left femur'.
CLASSES = {
    'pathmnist': ('adipose tissue', 'background', 'debris', 'lymphocytes',
                  'mucus', 'smooth muscle', 'normal colon mucosa',
                  'cancer-associated stroma',
                  'colorectal adenocarcinoma epithelium'),
    'chestmnist': ('atelectasis', 'cardiomegaly', 'pleural effusion',
                   'infiltration', 'mass', 'nodule', 'pneumonia',
                   'pneumothorax', 'consolidation', 'edema', 'emphysema',
                   'fibrosis', 'pleural thickening', 'hernia', 'no finding'),
    'dermamnist': ('actinic keratoses and intraepithelial carcinoma',
                   'basal cell carcinoma', 'benign keratosis-like lesions',
                   'dermatofibroma', 'melanoma', 'melanocytic nevi',
                   'vascular lesions'),
    'octmnist': ('choroidal neovascularization', 'diabetic macular edema',
                 'drusen', 'normal retina'),
    'pneumoniamnist': ('normal chest', 'pneumonia'),
    'retinamnist': ('no diabetic retinopathy', 'mild diabetic retinopathy',
                    'moderate diabetic retinopathy',
                    'severe diabetic retinopathy',
                    'proliferative diabetic retinopathy'),
    'breastmnist': ('malignant breast tumor', 'normal or benign breast tissue'),
    'bloodmnist': ('basophil', 'eosinophil', 'erythroblast',
                   'immature granulocytes', 'lymphocyte', 'monocyte',
                   'neutrophil', 'platelet'),
    'tissuemnist': ('collecting duct and connecting tubule',
                    'distal convoluted tubule',
                    'glomerular endothelial cells',
                    'interstitial endothelial cells', 'leukocytes',
                    'podocytes', 'proximal tubule segments',
                    'thick ascending limb'),
    'organamnist': _ORGANS,
    'organcmnist': _ORGANS,
    'organsmnist': _ORGANS,
}

DOMAINS = {
    'pathmnist': 'pathology', 'chestmnist': 'xray', 'dermamnist': 'dermoscopy',
    'octmnist': 'oct', 'pneumoniamnist': 'xray', 'retinamnist': 'fundus',
    'breastmnist': 'ultrasound', 'bloodmnist': 'microscopy',
    'tissuemnist': 'microscopy', 'organamnist': 'ct', 'organcmnist': 'ct',
    'organsmnist': 'ct',
}

# Official split sizes (MedMNIST INFO n_samples), for the layout docs.
N_SAMPLES = {
    'pathmnist': (89996, 10004, 7180), 'chestmnist': (78468, 11219, 22433),
    'dermamnist': (7007, 1003, 2005), 'octmnist': (97477, 10832, 1000),
    'pneumoniamnist': (4708, 524, 624), 'retinamnist': (1080, 120, 400),
    'breastmnist': (546, 78, 156), 'bloodmnist': (11959, 1712, 3421),
    'tissuemnist': (165466, 23640, 47280),
    'organamnist': (34561, 6491, 17778), 'organcmnist': (12975, 2392, 8216),
    'organsmnist': (13932, 2452, 8827),
}

CHEST_POLICY = ('ChestMNIST is multi-label (14 findings): an image with '
                'exactly one finding takes that finding, an image with none '
                "takes 'no finding' (label 14), images with two or more "
                'findings are left out.')


def file_name(flag: str, size: int) -> str:
  return f'{flag}.npz' if size == 28 else f'{flag}_{size}.npz'


def expected_md5(flag: str, size: int) -> str:
  return MD5[flag][SIZES.index(size)]


@functools.lru_cache(maxsize=64)
def _md5(path: str, mtime: float, nbytes: int) -> str:
  del mtime, nbytes  # part of the cache key only
  h = hashlib.md5()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def md5_of(path: str) -> str:
  st = os.stat(path)
  return _md5(os.path.abspath(path), st.st_mtime, st.st_size)


def find_file(root: str, flag: str, size: int) -> str:
  """The npz of (flag, size) in root; a copy named in another case (e.g.
  `BreastMNIST.npz`) is accepted with a warning."""
  name = file_name(flag, size)
  path = os.path.join(root, name)
  if os.path.isfile(path):
    return path
  if os.path.isdir(root):
    for f in sorted(os.listdir(root)):
      if f.lower() == name:
        warnings.warn(f'{flag}: using {f!r} in {root} (official name: '
                      f'{name!r})', stacklevel=2)
        return os.path.join(root, f)
  raise LayoutError(
      f'{_source_name(flag, size)}: {path} not found. Put the official '
      f'MedMNIST file there (from {URL.format(file=name)}), or call '
      f'mgtil_jax.data.sources.medmnist.download({flag!r}, {size}, root) '
      'on a machine with network access.')


def check_md5(path: str, flag: str, size: int) -> bool:
  """True if the file is byte-identical to the official release; warns
  (never fails) otherwise."""
  got, want = md5_of(path), expected_md5(flag, size)
  if got != want:
    warnings.warn(f'{path}: MD5 {got} differs from the official {flag} '
                  f'{size}px file ({want}); a re-saved or modified copy, '
                  'used as it is', stacklevel=2)
  return got == want


def _labels(raw: np.ndarray, flag: str, path: str, split: str):
  """(int labels, keep mask) of one split."""
  raw = np.asarray(raw)
  if flag == 'chestmnist':
    if raw.ndim != 2 or raw.shape[1] != 14:
      raise ValueError(f'{path}: {split}_labels has shape {raw.shape}; '
                       'expected [N, 14] for ChestMNIST')
    positives = raw.sum(1)
    labels = np.where(positives == 0, 14, raw.argmax(1))
    return labels.astype(np.int64), positives <= 1
  if raw.ndim == 2 and raw.shape[1] == 1:
    raw = raw[:, 0]
  if raw.ndim != 1:
    raise ValueError(f'{path}: {split}_labels has shape {raw.shape}; expected '
                     '[N] or [N, 1]')
  n_classes = len(CLASSES[flag])
  if raw.size and (raw.min() < 0 or raw.max() >= n_classes):
    raise ValueError(f'{path}: {split}_labels outside [0, {n_classes})')
  return raw.astype(np.int64), np.ones(len(raw), bool)


def _open_npz(path: str):
  """np.load of an .npz archive, or one line naming the file."""
  try:
    f = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    # numpy says "pickled (object) data" of any file that is neither a zip
    # nor an .npy: not the user's problem, which is that it is no .npz.
    why = '' if 'pickled' in str(e) else f': {e}'
    raise errors.UserError(f'{path}: not a readable .npz archive (a zip of '
                           f'.npy arrays, as MedMNIST distributes them){why}'
                           ) from None
  if not isinstance(f, np.lib.npyio.NpzFile):
    raise errors.UserError(f'{path}: holds a single .npy array, not an .npz '
                           'archive of {train,val,test}_images/_labels')
  return f


def read(root: str, flag: str, size: int) -> dict:
  """{'train', 'val', 'test': [Example(uint8 image, label, key)]}."""
  path = find_file(root, flag, size)
  check_md5(path, flag, size)
  out = {}
  with _open_npz(path) as f:
    for split in ('train', 'val', 'test'):
      if f'{split}_images' not in f.files or f'{split}_labels' not in f.files:
        raise ValueError(f'{path}: missing {split}_images/{split}_labels '
                         f'(keys: {f.files})')
      images = f[f'{split}_images']
      if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f'{path}: {split}_images is {images.dtype}'
                         f'{list(images.shape)}; expected uint8[N, H, W(, 3)]')
      labels, keep = _labels(f[f'{split}_labels'], flag, path, split)
      if len(labels) != len(images):
        raise ValueError(f'{path}: {len(images)} {split} images but '
                         f'{len(labels)} labels')
      out[split] = [Example(images[i], int(labels[i]), f'{split}/{i:06d}')
                    for i in np.flatnonzero(keep)]
  return out


def download(flag: str, size: int, root: str) -> str:
  """Fetches the official file into root (only when called) and checks its
  MD5; returns its path. Needs network access to zenodo.org."""
  if flag not in MD5 or size not in SIZES:
    raise ValueError(f'medmnist: unknown flag/size {flag!r}/{size}; expected '
                     f'one of {sorted(MD5)} at {SIZES}')
  os.makedirs(root, exist_ok=True)
  name = file_name(flag, size)
  path = os.path.join(root, name)
  if os.path.isfile(path) and md5_of(path) == expected_md5(flag, size):
    return path
  tmp = path + '.part'
  try:
    urllib.request.urlretrieve(URL.format(file=name), tmp)
  except (urllib.error.URLError, OSError) as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise IOError(f'medmnist: could not download {URL.format(file=name)} '
                  f'({e}); without network access, copy {name} into '
                  f'{root} yourself') from e
  os.replace(tmp, path)
  if md5_of(path) != expected_md5(flag, size):
    raise IOError(f'{path}: downloaded file has MD5 {md5_of(path)}, expected '
                  f'{expected_md5(flag, size)}')
  return path


def _source_name(flag: str, size: int) -> str:
  return flag if size == 28 else f'{flag}_{size}'


def _make(flag: str, size: int) -> Source:
  n = N_SAMPLES[flag]
  return Source(
      name=_source_name(flag, size), domain=DOMAINS[flag],
      class_names=CLASSES[flag],
      read=functools.partial(read, flag=flag, size=size),
      homepage=HOMEPAGE, citation=CITATION,
      layout=(f'<root>/{file_name(flag, size)}  (official MedMNIST file; '
              f'train/val/test = {n[0]}/{n[1]}/{n[2]})'),
      split_policy='official MedMNIST train/val/test',
      label_policy=CHEST_POLICY if flag == 'chestmnist' else '')


SOURCES = {(flag, size): register(_make(flag, size))
           for flag in MD5 for size in SIZES}


def main(argv=None):
  import argparse  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description='Download official MedMNIST files '
                              '(explicitly; nothing else downloads).')
  p.add_argument('--download', nargs='+', required=True, metavar='FLAG',
                 help=f'flags, from {sorted(MD5)}, or "all"')
  p.add_argument('--size', type=int, nargs='+', default=[28], choices=SIZES)
  p.add_argument('--root', default=os.path.expanduser('~/.medmnist'))
  args = p.parse_args(argv)
  flags = sorted(MD5) if args.download == ['all'] else args.download
  for flag in flags:
    for size in args.size:
      print(download(flag, size, args.root))


if __name__ == '__main__':
  main()
