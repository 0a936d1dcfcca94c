r"""Your own datasets as a continual sequence (bring your own data), any kinds
mixed, from the command line alone.

  python launch.py --config configs/custom.py:root=/data/mine,tasks=knee+skin \
      --workdir runs/mine
  python launch.py \
      --config=configs/custom.py:root=/data/mine,tasks=pneumoniamnist:npz+ham:folder+blood:csv \
      --workdir runs/mixed
  python launch.py --config=configs/custom.py:tasks_file=/data/mine/tasks.yaml \
      --workdir runs/mixed

Each task is `name[:kind]`, its data in root/<name> (kind= is the default
kind of tasks that name none). Kinds:
  folder  root/<task>/<class>/*.png   (or root/<task>/{train,test}/<class>/)
  csv     root/<task>/labels.csv with columns path,label[,split]
  json    root/<task>/labels.json: [{"path", "label"[, "split"]}, ...]
          or {"classes": [...], "items": [...]}
  npz     an official MedMNIST file: the task name is its flag
          (pneumoniamnist, breastmnist_64, ...), the file
          root/<flag>.npz (or root/<flag>_<res>.npz)
  <reader> any registered dataset reader (`python -m mgtil_jax.data.builder
          --list`), e.g. vqa_rad_organ: the task name is the reader's name,
          its folder root/<name>
Class names are the class folder names ('_' and '-' read as spaces) or the
label strings: they fill the prompt "a photo of {}", so name them as clinical
phrases. Without a split, 20% of each class goes to test (seed 0).

A task-list file (tasks_file=, JSON or YAML) says the same per task, with
paths and per-task settings:

  root: /data/mine            # optional; default: the file's folder
  tasks:                      # (or the list alone)
    - {name: pneumoniamnist, kind: npz}           # root/pneumoniamnist.npz
    - {name: ham, kind: folder, path: ham10000, domain: dermoscopy,
       class_names: {nv: melanocytic nevus, mel: melanoma}}
    - {name: blood, kind: csv, path: /data/blood, file: labels.csv,
       domain: microscopy}
    - {name: breastmnist_64, kind: npz, path: npz_files/}

`path` is the task's folder (an npz task's: the folder of its file, or the
file itself), relative to root; `domain` its imaging domain (default the
domain= argument); `file` a table's file name; `class_names` a dict {folder:
phrase} for folders or a list for tables. Details: docs/data.md.

Arguments (comma separated key=value):
  root       the folder of your task folders (required without tasks_file)
  tasks      name[:kind] joined by '+', in training order
  tasks_file a JSON / YAML task list (instead of tasks=)
  kind       folder | csv | json | npz | <reader> for tasks naming none
             (default folder)
  res        MedMNIST resolution of npz tasks named without a size suffix:
             28 | 64 | 128 | 224 (default 28)
  domain     the tasks' imaging domain, e.g. xray (default custom)
  corpus, pool   as in configs/hieramed.py (the reference-batch methods
             need corpus=)
  method, preset (default tiny), size, steps (default 300), data_dir,
  runlocal  as in configs/hieramed.py
"""

import json
import os

from configs import common, retrieval, source_data
from mgtil_jax.core import errors

TABLE_KINDS = ('folder', 'csv', 'json')


def _load_tasks_file(path: str):
  """(root or None, [task dict]) of a JSON / YAML task list."""
  path = os.path.expanduser(str(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f'tasks_file: {path} not found (expected a JSON '
                            'or YAML task list, see configs/custom.py)')
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
  except UnicodeDecodeError as e:
    raise errors.not_utf8(f'tasks_file: {path}', e) from None
  try:
    if path.lower().endswith(('.yaml', '.yml')):
      import yaml  # pylint: disable=g-import-not-at-top
      data = yaml.safe_load(text)
    else:
      data = json.loads(text)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'tasks_file: {path} could not be parsed '
                     f'({type(e).__name__}: {str(e).splitlines()[0]})'
                     ) from None
  root = None
  if isinstance(data, dict):
    root = data.get('root')
    unknown = sorted(set(data) - {'root', 'tasks'})
    if unknown:
      raise ValueError(f'tasks_file: {path}: unknown keys {unknown}; '
                       'expected root, tasks')
    data = data.get('tasks')
  if not isinstance(data, list) or not data:
    raise ValueError(f'tasks_file: {path}: expected a non-empty list of tasks '
                     '(or {"root": ..., "tasks": [...]})')
  tasks = []
  for i, t in enumerate(data):
    if isinstance(t, str):
      t = {'name': t}
    if not isinstance(t, dict) or not t.get('name'):
      raise ValueError(f'tasks_file: {path}: task {i} needs a "name"; got '
                       f'{t!r}')
    unknown = sorted(set(t) - {'name', 'kind', 'path', 'domain', 'file',
                               'class_names'})
    if unknown:
      raise ValueError(f'tasks_file: {path}: task {t["name"]!r} has unknown '
                       f'fields {unknown}; expected name, kind, path, domain, '
                       'file, class_names')
    tasks.append(dict(t))
  base = os.path.dirname(os.path.abspath(path))
  root = os.path.join(base, os.path.expanduser(str(root))) if root else base
  return root, tasks


def _parse_tasks(text: str) -> list[dict]:
  out = []
  for item in str(text).split('+'):
    if not item:
      continue
    name, _, kind = item.partition(':')
    out.append({'name': name, **({'kind': kind} if kind else {})})
  return out


def _npz_name(task: dict, res: int) -> tuple[str, str]:
  """(registry name, folder) of an npz task; the name is the MedMNIST flag
  with its size suffix, taken from the file name or the task name."""
  from mgtil_jax.data.sources import medmnist  # pylint: disable=g-import-not-at-top
  path = str(task.get('path') or '')
  stem = task['name']
  folder = path
  if path.lower().endswith('.npz'):
    folder = os.path.dirname(path) or '.'
    stem = os.path.basename(path)[:-4].lower()
  flag, _, size = stem.partition('_')
  if flag not in medmnist.MD5:
    raise ValueError(f'custom config: task {task["name"]!r} (kind npz): '
                     f'{stem!r} is not a MedMNIST flag; name the task or its '
                     f'file after one of {sorted(medmnist.MD5)} (e.g. '
                     'pneumoniamnist or breastmnist_64)')
  size = int(size) if size.isdigit() else res
  if size not in medmnist.SIZES:
    raise ValueError(f'custom config: task {task["name"]!r}: MedMNIST size '
                     f'{size} not one of {medmnist.SIZES}')
  return (flag if size == 28 else f'{flag}_{size}'), (folder or '.')


def sequence(tasks: list[dict], *, kind: str, domain: str, res: int):
  """(source names in order, folders, custom) of `config.data` from task
  dicts {name, kind, path, domain, file, class_names}."""
  # pylint: disable=g-import-not-at-top
  import mgtil_jax.data.sources  # registers the MGTIL readers
  from mgtil_jax.data.sources import base, medmnist, medpix, vqa_rad  # pylint: disable=unused-import
  names, folders, custom = [], {}, {}
  for t in tasks:
    k = t.get('kind') or kind
    if k in TABLE_KINDS:
      name = t['name']
      spec = {'kind': k, 'domain': t.get('domain') or domain}
      for field in ('file', 'class_names'):
        if t.get(field):
          spec[field] = t[field]
      custom[name] = spec
      folders[name] = str(t.get('path') or name)
    elif k == 'npz':
      extra = sorted(f for f in ('file', 'class_names', 'domain')
                     if t.get(f))
      if extra:
        raise ValueError(f'custom config: task {t["name"]!r} (kind npz) '
                         f'takes name and path only, got {extra} (a MedMNIST '
                         "file's classes and domain are its own)")
      name, folder = _npz_name(t, res)
      folders[name] = folder
    elif k in base.SOURCES:
      name = k
      folders[name] = str(t.get('path') or t['name'])
    else:
      raise ValueError(f'custom config: task {t["name"]!r}: unknown kind '
                       f'{k!r}; expected folder, csv, json, npz or a dataset '
                       'reader (python -m mgtil_jax.data.builder --list)')
    if name in names:
      raise ValueError(f'custom config: task {name!r} appears twice')
    names.append(name)
  return tuple(names), folders, custom


def get_config(arg=None):
  a = common.parse_arg(arg, root='', tasks='', tasks_file='', kind='folder',
                       res=28, domain='custom', method='ft', preset='tiny',
                       size=0, steps=300, data_dir='', corpus='', pool='',
                       runlocal=False)
  root = str(a.root)
  if a.tasks_file:
    if a.tasks:
      raise ValueError('custom config: give tasks= or tasks_file=, not both')
    file_root, tasks = _load_tasks_file(a.tasks_file)
    root = root or file_root
  else:
    tasks = _parse_tasks(a.tasks)
  if not tasks:
    raise ValueError('custom config: name your tasks, e.g. '
                     '--config configs/custom.py:root=/data/mine,'
                     'tasks=a+b:csv+pneumoniamnist:npz, or give tasks_file=')
  names, folders, custom = sequence(tasks, kind=str(a.kind),
                                    domain=str(a.domain), res=int(a.res))
  c = common.base_config()
  c.method = a.method
  c.data = source_data.data_config(
      benchmark='custom', sources=names, root=root,
      image_size=source_data.image_size_of(a.preset, a.size),
      data_dir=a.data_dir, folders=folders, custom=custom)
  retrieval.apply_args(c, corpus=a.corpus, pool=a.pool)
  return source_data.apply_training(c, preset=a.preset, steps=a.steps,
                                     runlocal=a.runlocal)
