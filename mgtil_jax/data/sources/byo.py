"""Bring your own data: an image folder per class, or a CSV/JSON table.

Image folder (`image_folder_source`):

    <root>/<class>/<any/sub/dirs>/*.png|jpg|...        one pool, split here
    <root>/train/<class>/...  and  <root>/test/<class>/...   your own split

Class names are the folder names with '_' and '-' read as spaces, or the
phrases you give (`class_names={'pna': 'pneumonia', ...}`): they are what the
prompts say ("a photo of {class}"), so make them clinical phrases.

Table (`table_source`), paths relative to the table's folder:

    labels.csv:   path,label[,split]          split in train|val|test
    labels.json:  [{"path": ..., "label": ..., "split": ...}, ...]
                  or {"classes": [...], "items": [...]}

Labels are class names, or integer indices into `classes` (given in the
config or in the JSON). Without a split column/field, the builder makes a
deterministic stratified split (config.data.test_fraction, config.data.seed).

In a config (see configs/custom.py), `config.data.custom[name]` is a dict
`kind='folder'|'csv'|'json'` (+ optional `file`, `domain`, `class_names`);
`source_from_config` turns it into a `Source`. Custom sources are not put in
the global registry (names may repeat across runs); to add your dataset to
the registry permanently, `register(image_folder_source(...))` in a module.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from mgtil_jax.core import errors
from mgtil_jax.data.sources.base import Example, LayoutError, Source

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.gif',
                    '.webp')
_SPLIT_ALIASES = {'train': 'train', 'training': 'train', 'val': 'val',
                  'valid': 'val', 'validation': 'val', 'dev': 'val',
                  'test': 'test', 'testing': 'test'}


def _phrase(folder: str) -> str:
  return ' '.join(folder.replace('_', ' ').replace('-', ' ').split())


def _class_dirs(root: str) -> list[str]:
  return sorted(d for d in os.listdir(root)
                if os.path.isdir(os.path.join(root, d)) and
                not d.startswith('.'))


def _images_under(directory: str) -> list[str]:
  out = []
  for dirpath, dirnames, filenames in os.walk(directory):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    out += [os.path.join(dirpath, f) for f in sorted(filenames)
            if f.lower().endswith(IMAGE_EXTENSIONS)]
  return out


def _has_own_split(root: str) -> bool:
  return all(os.path.isdir(os.path.join(root, s)) for s in ('train', 'test'))


def folder_classes(root: str) -> list[str]:
  """The class folder names of an image-folder dataset, sorted."""
  if not os.path.isdir(root):
    raise LayoutError(f'image folder {root!r} does not exist')
  base = os.path.join(root, 'train') if _has_own_split(root) else root
  classes = _class_dirs(base)
  if len(classes) < 2:
    raise LayoutError(f'image folder {base!r}: expected one sub-folder per '
                      f'class (at least 2), found {classes}')
  for folder in classes:  # an empty folder would be a class never seen
    if not _has_image(os.path.join(base, folder)):
      raise LayoutError(
          f'class folder {os.path.join(base, folder)!r} has no image files '
          f'({", ".join(IMAGE_EXTENSIONS)}); add images or remove the folder')
  return classes


def _has_image(directory: str) -> bool:
  for _, dirnames, filenames in os.walk(directory):
    dirnames[:] = [d for d in dirnames if not d.startswith('.')]
    if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in filenames):
      return True
  return False


def read_image_folder(root: str, folders: list[str]) -> dict:
  """{'train'[, 'test']: [Example]} of `root/<class>/...` (label = index of
  the class folder in `folders`)."""
  if _has_own_split(root):
    layout = {s: os.path.join(root, s) for s in ('train', 'val', 'test')
              if os.path.isdir(os.path.join(root, s))}
  else:
    layout = {'train': root}
  out = {}
  for split, base in layout.items():
    unknown = sorted(set(_class_dirs(base)) - set(folders))
    if unknown:
      raise LayoutError(f'{base!r}: class folders {unknown} are not classes '
                        f'of the training split {folders}')
    examples = []
    for label, folder in enumerate(folders):
      directory = os.path.join(base, folder)
      if not os.path.isdir(directory):
        continue
      for path in _images_under(directory):
        examples.append(Example(path, label, os.path.relpath(path, root)))
    if split == 'train' and not examples:
      raise LayoutError(f'{base!r}: no image files ({", ".join(IMAGE_EXTENSIONS)})'
                        ' under its class folders')
    out[split] = examples
  return out


def image_folder_source(name: str, root: str, *, domain: str = 'custom',
                        class_names: dict | None = None, **kwargs) -> Source:
  """A Source of an image folder per class. `root` is listed now, for the
  class names; `Source.read` may be given another root of the same classes."""
  folders = folder_classes(root)
  class_names = dict(class_names or {})
  unknown = sorted(set(class_names) - set(folders))
  if unknown:
    raise ValueError(f'{name}: class_names names folders {unknown} that are '
                     f'not in {root!r} (folders: {folders})')
  phrases = tuple(class_names.get(f) or _phrase(f) for f in folders)
  return Source(
      name=name, domain=domain, class_names=phrases,
      read=lambda r: read_image_folder(r, folders),
      layout='<root>/<class>/*.png  or  <root>/{train,test}/<class>/*.png',
      split_policy=('the train/ and test/ folders' if _has_own_split(root)
                    else 'made by the builder'), **kwargs)


# ------------------------------------------------------------------ tables --


def _parse_table(path: str):
  """(rows, classes or None, where(i)) of a JSON or CSV label table."""
  if path.lower().endswith('.json'):
    with open(path, encoding='utf-8') as f:
      try:
        data = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}: not valid JSON ({e})') from None
    classes = None
    if isinstance(data, dict):
      classes = data.get('classes')
      data = data.get('items')
    if not isinstance(data, list):
      raise ValueError(f'{path}: expected a list of {{"path", "label"}} '
                       'objects, or {"classes": [...], "items": [...]}')
    rows = data
    where = lambda i: f'{path}: item {i}'
  else:
    with open(path, newline='', encoding='utf-8') as f:
      reader = csv.DictReader(f)
      fields = reader.fieldnames or []
      if 'path' not in fields or 'label' not in fields:
        raise ValueError(f'{path}: expected a header with columns path,label'
                         f'[,split]; got {fields}')
      rows = list(reader)
    classes = None
    where = lambda i: f'{path}: row {i + 2}'  # the header is line 1
  return rows, classes, where


def _read_rows(path: str) -> tuple[list[dict], list | None]:
  """Rows (dicts with path, label[, split]) and the class list in the file."""
  if not os.path.isfile(path):
    raise LayoutError(f'label table {path!r} does not exist')
  try:
    rows, classes, where = _parse_table(path)
  except UnicodeDecodeError as e:
    raise errors.not_utf8(path, e) from None
  for i, row in enumerate(rows):
    if not isinstance(row, dict) or not row.get('path') or (
        row.get('label') in (None, '')):
      raise ValueError(f'{where(i)}: expected a path and a label, got {row!r}')
    split = str(row.get('split') or 'train').strip().lower()
    if split not in _SPLIT_ALIASES:
      raise ValueError(f'{where(i)}: split {row.get("split")!r} is not one of '
                       'train, val, test')
    row['split'] = _SPLIT_ALIASES[split]
    row['_where'] = where(i)
  return rows, classes


def _is_index(label) -> bool:
  return isinstance(label, (int, np.integer)) or (
      isinstance(label, str) and label.strip().lstrip('-').isdigit())


def table_classes(path: str, class_names=None) -> list[str]:
  rows, in_file = _read_rows(path)
  classes = list(class_names or in_file or [])
  if not classes:
    if any(_is_index(r['label']) for r in rows):
      raise ValueError(f'{path}: integer labels need class names (a '
                       '"classes" list in the JSON, or class_names in the '
                       'config)')
    classes = sorted({str(r['label']).strip() for r in rows})
  if len(classes) < 2:
    raise LayoutError(f'{path}: only the class {classes}; expected at least '
                      '2 classes (a 1-class task is always right)')
  return classes


def read_table(root: str, file: str, classes: list[str]) -> dict:
  path = file if os.path.isabs(file) else os.path.join(root, file)
  rows, _ = _read_rows(path)
  index = {c: i for i, c in enumerate(classes)}
  folder = os.path.dirname(path)
  out = {'train': [], 'val': [], 'test': []}
  missing = []
  for row in rows:
    label = row['label']
    if _is_index(label):
      label = int(label)
      if not 0 <= label < len(classes):
        raise ValueError(f'{row["_where"]}: label {label} out of range for '
                         f'{len(classes)} classes')
    else:
      label = str(label).strip()
      if label not in index:
        raise ValueError(f'{row["_where"]}: label {label!r} is not one of '
                         f'the classes {classes}')
      label = index[label]
    image = os.path.join(folder, row['path'])
    if not os.path.isfile(image):
      missing.append(row['path'])
    out[row['split']].append(Example(image, label, row['path']))
  if missing:
    raise LayoutError(f'{path}: {len(missing)} image files not found, e.g. '
                      f'{missing[:5]} (paths are relative to {folder})')
  used = {e.label for split in out.values() for e in split}
  unused = [c for i, c in enumerate(classes) if i not in used]
  if unused:
    raise LayoutError(f'{path}: no rows for the classes {unused} (of '
                      f'{classes}); every class needs images')
  return out


def table_source(name: str, root: str, *, file: str = 'labels.csv',
                 domain: str = 'custom', class_names=None,
                 **kwargs) -> Source:
  """A Source of a CSV or JSON table of (path, label[, split]) in `root`."""
  path = file if os.path.isabs(file) else os.path.join(root, file)
  classes = table_classes(path, class_names)
  return Source(name=name, domain=domain, class_names=tuple(classes),
                read=lambda r: read_table(r, file, classes),
                layout=f'<root>/{file} with columns path,label[,split]; '
                       'image paths relative to it',
                split_policy='the split column, else made by the builder',
                **kwargs)


def source_from_config(name: str, spec, folder: str) -> Source:
  """`config.data.custom[name]` (kind, file, domain, class_names) -> Source
  reading `folder`."""
  spec = dict(spec)
  kind = spec.pop('kind', 'folder')
  domain = spec.pop('domain', 'custom')
  class_names = spec.pop('class_names', None)
  file = spec.pop('file', None)
  if spec:
    raise ValueError(f'config.data.custom.{name}: unknown fields '
                     f'{sorted(spec)}; expected kind, file, domain, '
                     'class_names')
  if not os.path.isdir(folder):
    raise LayoutError(f'config.data.custom.{name}: dataset folder {folder} '
                      'does not exist')
  if kind == 'folder':
    if class_names is not None and not hasattr(class_names, 'keys'):
      raise ValueError(f'config.data.custom.{name}.class_names: for an image '
                       'folder, expected a dict {folder: phrase}')
    return image_folder_source(name, folder, domain=domain,
                               class_names=class_names)
  if kind in ('csv', 'json'):
    return table_source(name, folder, file=file or f'labels.{kind}',
                        domain=domain,
                        class_names=list(class_names) if class_names else None)
  raise ValueError(f'config.data.custom.{name}.kind: expected folder, csv or '
                   f'json, got {kind!r}')
