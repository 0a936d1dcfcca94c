"""More bad inputs, from the files a user brings (images, tables, npz files,
corpora, checkpoints) to the places a run writes (read-only and full disks,
damaged checkpoints) and a multi-host start whose coordinator never answers.

Each case goes through `launch.main_cli` (via test_bad_inputs._refused) or a
real `python launch.py` subprocess and asserts: a non-zero exit, no
traceback, one `error: ...` line naming the field, file or value, and every
pre-existing folder the case touches (the data root, the corpus folder, the
cache / workdir of the module's finished run) unchanged: names, sizes and
mtimes (lock files: names and sizes).

Every case passes (the strict xfails that recorded misbehaviour were
removed as each was fixed, issue 25). One finished 2-task runlocal run is
built per module (~40 s): its images mix sizes, channels, bit depths and formats (the loader
resizes them: not an error), and its data and pretraining caches make the
later cases take seconds (`--config.cache_dir`).
"""

import contextlib
import errno
import glob
import io
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import types
import zipfile

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,wrong-import-position
from test_api import _clip_stats_copy as _checkpoint_copy  # CLIP's stats
from test_bad_inputs import ROOT, _env, _refused, _snapshot, _task_folder
import launch
# pylint: enable=g-import-not-at-top,wrong-import-position

TASKS = 'knee+skin'


# ------------------------------------------------------------- helpers --


def _listing(*dirs):
  """{path: (is_dir, size, mtime_ns)} of everything under `dirs` but lock
  files (`*.lock`: taking a lock creates or rewrites one; a new one in a
  sub-folder still shows in that folder's mtime)."""
  out = {}
  for top in dirs:
    top = str(top)
    if not os.path.exists(top):
      out[top] = None
      continue
    for base, dnames, fnames in os.walk(top):
      for name in dnames + fnames:
        path = os.path.join(base, name)
        if name.endswith('.lock'):
          continue
        st = os.lstat(path)
        out[path] = (stat.S_ISDIR(st.st_mode), st.st_size, st.st_mtime_ns)
  return out


def _custom(root, tasks=TASKS, extra=''):
  return f'--config=configs/custom.py:root={root},tasks={tasks},runlocal{extra}'


def _refuses(capsys, mine, argv, *names, watch=(), code=2):
  """`_refused` (one line naming `names`, exit 2, the finished run's
  results and checkpoints byte-identical) plus: every folder in `watch`,
  the module's data root and its finished workdir unchanged."""
  dirs = [mine.root, mine.workdir, *watch]
  before = _listing(*dirs)
  line, _ = _refused(capsys, (mine.workdir, mine.snap), argv, *names,
                     code=code)
  after = _listing(*dirs)
  changed = sorted(k for k in set(before) | set(after)
                   if before.get(k) != after.get(k))
  assert not changed, changed[:10]
  return line


def _refuses_data(capsys, mine, tmp_path, tasks, *names, extra=''):
  """`_refuses` of a custom run of `tasks` on the case's own data root,
  `tmp_path/data` (watched), in a new workdir."""
  data = tmp_path / 'data'
  return _refuses(capsys, mine, [_custom(data, tasks, extra),
                                 f'--workdir={tmp_path / "w"}'], *names,
                  watch=[data])


def _main(capsys, argv):
  """(exit code, stderr) of launch.main_cli run from the repo root."""
  capsys.readouterr()
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    rc = launch.main_cli(['launch.py'] + argv)
  finally:
    os.chdir(cwd)
  return rc, capsys.readouterr().err


def _png(path, array):
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  Image.fromarray(array).save(path)


@pytest.fixture(scope='module')
def mine(tmp_path_factory):
  """A finished 2-task custom run on images of mixed sizes, channels, bit
  depths and formats (the loader resizes them all: accepted)."""
  root = tmp_path_factory.mktemp('mine_data')
  _task_folder(root, 'knee', {'normal': 4, 'effusion': 4})
  _task_folder(root, 'skin', {'nevus': 4, 'melanoma': 4})
  rng = np.random.default_rng(1)
  _png(root / 'knee' / 'normal' / '0.png',  # grey, tall
       rng.integers(0, 255, (40, 17), np.uint8))
  _png(root / 'knee' / 'effusion' / '0.png',  # RGBA, smaller than 32 px
       rng.integers(0, 255, (5, 9, 4), np.uint8))
  _png(root / 'knee' / 'effusion' / '1.png',  # 16-bit grey
       rng.integers(0, 4095, (12, 12)).astype(np.uint16))
  Image.fromarray(rng.integers(0, 255, (20, 20, 3), np.uint8)).convert(
      'P').save(root / 'skin' / 'nevus' / '0.png')  # palette
  Image.fromarray(rng.integers(0, 255, (30, 50, 3), np.uint8)).save(
      root / 'skin' / 'melanoma' / '4.jpg')  # JPEG, wide
  workdir = tmp_path_factory.mktemp('mine') / 'run'
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    rc = launch.main_cli(['launch.py', _custom(root),
                          f'--workdir={workdir}'])
  finally:
    os.chdir(cwd)
  assert rc == 0
  return types.SimpleNamespace(root=str(root), workdir=str(workdir),
                               snap=_snapshot(str(workdir)), rc=rc)


# ---------------------------------------------------------------- files --


def test_mixed_image_sizes_and_channels_are_accepted(mine):
  with open(os.path.join(mine.workdir, 'results.json')) as f:
    results = json.load(f)
  assert [t['name'] for t in results['tasks']] == ['knee', 'skin']
  assert results['tasks'][1]['class_names'] == ['melanoma', 'nevus']
  built = glob.glob(os.path.join(mine.workdir, 'data', '**', 'knee-32px-*'),
                    recursive=True)
  assert built, os.listdir(os.path.join(mine.workdir, 'data'))


@pytest.mark.parametrize('damage', ['text', 'truncated', 'empty'])
def test_undecodable_png_names_the_image(capsys, mine, tmp_path, damage):
  data = tmp_path / 'data'
  _task_folder(data, 'knee', {'normal': 4, 'effusion': 4})
  bad = data / 'knee' / 'effusion' / '1.png'
  if damage == 'text':
    bad.write_text('this is a text file, not an image\n')
  elif damage == 'truncated':
    _png(bad, np.random.default_rng(0).integers(0, 255, (64, 64, 3),
                                                np.uint8))
    raw = bad.read_bytes()
    bad.write_bytes(raw[:len(raw) // 2])
  else:
    bad.write_bytes(b'')
  line = _refuses_data(capsys, mine, tmp_path, 'knee',
                       os.path.join('effusion', '1.png'), 'cannot decode')
  assert ('truncated' in line) == (damage == 'truncated')


def test_huge_image_is_refused_naming_it(capsys, mine, tmp_path):
  # (Until builder.to_rgb caught it: PIL's DecompressionBombError, with its
  # traceback, naming no file.)
  data = tmp_path / 'data'
  _task_folder(data, 'knee', {'normal': 4, 'effusion': 4})
  Image.new('1', (14000, 14000)).save(data / 'knee' / 'normal' / '0.png')
  _refuses_data(capsys, mine, tmp_path, 'knee', os.path.join('normal', '0.png'),
                'too large')


def test_npz_without_the_medmnist_keys(capsys, mine, tmp_path):
  data = tmp_path / 'data'
  data.mkdir()
  np.savez(data / 'pneumoniamnist.npz',
           images=np.zeros((4, 28, 28), np.uint8),
           labels=np.zeros((4, 1), np.uint8))
  _refuses_data(capsys, mine, tmp_path, 'pneumoniamnist:npz',
                'pneumoniamnist.npz', 'train_images')


def test_npz_that_is_not_an_npz(capsys, mine, tmp_path):
  # (Until medmnist._open_npz: numpy's "This file contains pickled (object)
  # data ... allow_pickle=" ValueError, with its traceback, naming no file.)
  data = tmp_path / 'data'
  data.mkdir()
  (data / 'pneumoniamnist.npz').write_text('not a numpy file\n')
  line = _refuses_data(capsys, mine, tmp_path, 'pneumoniamnist:npz',
                       'pneumoniamnist.npz', 'not a readable .npz')
  assert 'pickle' not in line, line


def _refuses_table(capsys, mine, tmp_path, task, table, content, *names,
                   n=4):
  """`_refuses_data` of a task `task` of `n` images (img/<i>.png) whose
  label table `table` (labels.csv or labels.json: its kind) holds
  `content` (text, or bytes as they are)."""
  _task_folder(tmp_path / 'data', task, {'img': n})
  path = tmp_path / 'data' / task / table
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content)
  return _refuses_data(capsys, mine, tmp_path, task, *names,
                       extra=f',kind={table.rsplit(".", 1)[1]}')


def test_csv_missing_the_label_column(capsys, mine, tmp_path):
  _refuses_table(capsys, mine, tmp_path, 'skin', 'labels.csv',
                 'path,diagnosis\n' + ''.join(
                     f'img/{i}.png,{"ab"[i % 2]}\n' for i in range(4)),
                 os.path.join('skin', 'labels.csv'), 'path,label',
                 'diagnosis')


def test_json_items_that_are_lists_not_objects(capsys, mine, tmp_path):
  _refuses_table(capsys, mine, tmp_path, 'eye', 'labels.json', json.dumps(
      [[f'img/{i}.png', 'ab'[i % 2]] for i in range(4)]),
                 os.path.join('eye', 'labels.json'), 'item 0',
                 'a path and a label')


def test_json_items_that_are_an_object_not_a_list(capsys, mine, tmp_path):
  _refuses_table(capsys, mine, tmp_path, 'eye', 'labels.json', json.dumps(
      {'classes': ['a', 'b'], 'items': {'img/0.png': 0, 'img/1.png': 1}}),
                 os.path.join('eye', 'labels.json'), 'expected a list')


def test_open_clip_config_that_is_a_list(capsys, mine, tmp_path):
  # (Until biomedclip._read_json checked the type: AttributeError: 'list'
  # object has no attribute 'get', with its traceback.)
  ck = _checkpoint_copy(tmp_path)
  (ck / 'open_clip_config.json').write_text('[1, 2]')
  _refuses(capsys, mine, _weights(mine, ck, ck, tmp_path / 'w'),
           'open_clip_config.json', 'JSON object', watch=[ck])


def test_workdir_config_record_that_is_a_list(capsys, mine, tmp_path):
  # (Until workdir.check_fingerprint checked the type: AttributeError:
  # 'list' object has no attribute 'get', with its traceback.)
  workdir = tmp_path / 'w'
  workdir.mkdir()
  (workdir / 'config.json').write_text('["seed"]')
  _refuses(capsys, mine, [_custom(mine.root), f'--workdir={workdir}'],
           str(workdir / 'config.json'), 'unreadable config record',
           watch=[workdir])


@pytest.mark.parametrize('encoding', ['utf-16', 'latin-1'])
def test_labels_csv_in_another_encoding(capsys, mine, tmp_path, encoding):
  # (Until byo._read_rows caught it: UnicodeDecodeError, with its traceback,
  # naming no file.)
  text = 'path,label\n' + ''.join(
      f'img/{i}.png,{["naevus bénin", "mélanome"][i % 2]}\n'
      for i in range(4))
  _refuses_table(capsys, mine, tmp_path, 'skin', 'labels.csv',
                 text.encode(encoding), os.path.join('skin', 'labels.csv'),
                 'UTF-8')


def test_tasks_file_in_another_encoding(capsys, mine, tmp_path):
  # (Until custom._load_tasks_file caught it: "error: --config: 'utf-8'
  # codec can't decode byte 0xff ...", naming no file.)
  data = tmp_path / 'data'
  _task_folder(data, 'knee', {'normal': 4, 'effusion': 4})
  (data / 'tasks.json').write_bytes(
      json.dumps([{'name': 'knee', 'domain': 'radiographie du genou'}]
                 ).encode('utf-16'))
  line = _refuses(capsys, mine, [
      f'--config=configs/custom.py:tasks_file={data / "tasks.json"},runlocal',
      f'--workdir={tmp_path / "w"}'], '--config', watch=[data])
  assert str(data / 'tasks.json') in line, line


# ------------------------------------------------------------- datasets --


@pytest.mark.parametrize('label', [5, -1])
def test_label_out_of_range(capsys, mine, tmp_path, label):
  _refuses_table(capsys, mine, tmp_path, 'eye', 'labels.json', json.dumps({
      'classes': ['glaucoma', 'normal fundus'],
      'items': [{'path': f'img/{i}.png', 'label': [0, 1, label, 1][i]}
                for i in range(4)]}),
                 os.path.join('eye', 'labels.json'), 'item 2',
                 f'label {label}', 'out of range')


def test_split_overlapping_another(capsys, mine, tmp_path):
  _refuses_table(capsys, mine, tmp_path, 'skin', 'labels.csv',
                 'path,label,split\n' + ''.join(
                     f'img/{i}.png,{"ab"[i % 2]},train\n' for i in range(6))
                 + 'img/0.png,a,test\nimg/3.png,b,test\n',
                 'skin/test', 'duplicate', 'img/0.png', n=6)


# -------------------------------------------------------------- corpora --


def _zscl(mine, corpus, workdir, *extra):
  """A corpus-needing method on the module's tasks, with its caches (the
  pretraining is a cache hit: seconds to the corpus)."""
  return [_custom(mine.root, extra=f',method=zscl,corpus={corpus}'),
          f'--config.cache_dir={mine.workdir}', f'--workdir={workdir}',
          *extra]


def _refuses_corpus(capsys, mine, tmp_path, corpus_file, *names):
  """`_refuses` of `_zscl` on `corpus_file` (its folder watched), the line
  naming the file and `names`."""
  return _refuses(capsys, mine, _zscl(mine, corpus_file, tmp_path / 'w'),
                  str(corpus_file), *names, watch=[corpus_file.parent])


def _corpus_png(path, seed):
  _png(path, np.random.default_rng(seed).integers(0, 255, (12, 12, 3),
                                                  np.uint8))


# (Until corpus.ingest named the user's file, the three "no entry could be
# ingested" cases named the ingestion store in the new workdir instead,
# <workdir>/retrieval/corpus-<hash>; the truncated shard blamed a caption.)


def test_empty_corpus_file(capsys, mine, tmp_path):
  captions = tmp_path / 'corpus' / 'captions.jsonl'
  captions.parent.mkdir()
  captions.write_text('')
  _refuses_corpus(capsys, mine, tmp_path, captions,
                  'no entry could be ingested')


def test_corpus_captions_whose_images_do_not_exist(capsys, mine, tmp_path):
  captions = tmp_path / 'corpus' / 'captions.jsonl'
  captions.parent.mkdir()
  captions.write_text(''.join(
      json.dumps({'image': f'gone{i}.png', 'caption': f'chest x-ray {i}'}) +
      '\n' for i in range(5)))
  _refuses_corpus(capsys, mine, tmp_path, captions, 'missing_image')


@pytest.mark.slow  # a whole zscl run (~25 s with the caches)
def test_corpus_duplicate_ids_are_counted_not_fatal(capsys, mine, tmp_path):
  # docs/retrieval.md: duplicates are counted in ingest_report.json.
  corpus = tmp_path / 'corpus'
  for i in range(6):
    _corpus_png(corpus / f'{i}.png', i)
  (corpus / 'captions.jsonl').write_text(''.join(
      json.dumps({'id': 'same', 'image': f'{i}.png',
                  'caption': f'chest x-ray number {i}'}) + '\n'
      for i in range(6)))
  before = _listing(corpus, mine.root, mine.workdir)
  rc, err = _main(capsys, _zscl(mine, corpus / 'captions.jsonl',
                                tmp_path / 'w',
                                '--config.train.steps_per_task=2'))
  assert rc == 0, err[-2000:]
  assert 'Traceback' not in err
  reports = glob.glob(str(tmp_path / 'w' / 'retrieval' / '*' /
                          'ingest_report.json'))
  with open(reports[0]) as f:
    counts = json.load(f)['counts']
  assert counts['duplicate_id'] == 5 and counts['written'] == 1, counts
  assert _listing(corpus, mine.root, mine.workdir) == before
  assert _snapshot(mine.workdir) == mine.snap


def test_corpus_shard_that_cannot_be_read(capsys, mine, tmp_path):
  shard = tmp_path / 'corpus' / 'shard-000.tar'
  shard.parent.mkdir()
  shard.write_bytes(b'not a tar file at all ' * 50)
  _refuses_corpus(capsys, mine, tmp_path, shard, 'not a readable tar shard')


def _tar_bytes(n):
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode='w') as tar:
    for i in range(n):
      img = io.BytesIO()
      Image.fromarray(np.random.default_rng(i).integers(
          0, 255, (12, 12, 3), np.uint8)).save(img, format='PNG')
      for name, data in ((f'{i:04d}.png', img.getvalue()),
                         (f'{i:04d}.txt', f'chest x-ray {i}'.encode())):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def test_corpus_shard_that_is_truncated(capsys, mine, tmp_path):
  shard = tmp_path / 'corpus' / 'shard-000.tar'
  shard.parent.mkdir()
  shard.write_bytes(_tar_bytes(4)[:1500])  # cut in the second member
  _refuses_corpus(capsys, mine, tmp_path, shard, 'retrieval corpus',
                  'truncated_shard')


def test_corpus_json_object_where_an_array_is_expected(capsys, mine,
                                                       tmp_path):
  corpus = tmp_path / 'corpus'
  _corpus_png(corpus / '0.png', 0)
  (corpus / 'captions.json').write_text(json.dumps(
      {'image': '0.png', 'caption': 'chest x-ray'}))
  _refuses_corpus(capsys, mine, tmp_path, corpus / 'captions.json',
                  'expected a JSON array')


def test_corpus_csv_in_another_encoding(capsys, mine, tmp_path):
  # (Until corpus._table_rows caught it: UnicodeDecodeError, with its
  # traceback, after pretraining, naming no file.)
  corpus = tmp_path / 'corpus'
  for i in range(3):
    _corpus_png(corpus / f'{i}.png', i)
  (corpus / 'captions.csv').write_bytes(('image,caption\n' + ''.join(
      f'{i}.png,radiographie thoracique n° {i}\n' for i in range(3))
                                          ).encode('utf-16'))
  _refuses_corpus(capsys, mine, tmp_path, corpus / 'captions.csv', 'UTF-8')


# -------------------------------------------------------------- weights --


def _weights(mine, init, preset, workdir):
  return [_custom(mine.root), f'--config.model.init={init}',
          f'--config.model.preset={preset}',
          f'--config.cache_dir={mine.workdir}', f'--workdir={workdir}']


def test_truncated_safetensors(capsys, mine, tmp_path):
  ck = _checkpoint_copy(tmp_path)
  weights = ck / 'open_clip_model.safetensors'
  raw = weights.read_bytes()
  weights.write_bytes(raw[:len(raw) // 2])
  _refuses(capsys, mine, _weights(mine, weights, ck, tmp_path / 'w'),
           str(weights), 'not a readable safetensors file', watch=[ck])


def test_weights_of_another_architecture(capsys, mine, tmp_path):
  # The config says 3 vision blocks, the state dict holds 2.
  ck = _checkpoint_copy(tmp_path)
  config = json.loads((ck / 'open_clip_config.json').read_text())
  config['timm_model_kwargs']['depth'] = 3
  (ck / 'open_clip_config.json').write_text(json.dumps(config))
  _refuses(capsys, mine, _weights(mine, ck, ck, tmp_path / 'w'),
           'open_clip_model.safetensors', 'does not match the architecture',
           'visual.trunk.blocks.2', watch=[ck])


def test_checkpoint_against_another_preset(capsys, mine, tmp_path):
  ck = _checkpoint_copy(tmp_path)
  _refuses(capsys, mine, _weights(mine, ck, 'tiny', tmp_path / 'w'),
           'config.model.init', 'config.model.preset', 'vision.width',
           watch=[ck])


class _RunsCode:
  """Pickles to `os.system('touch <marker>')`: unpickling it runs code."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def _evil_checkpoint(tmp_path, zipped: bool):
  """A checkpoint dir whose only weights are a .bin whose pickle runs
  code; (dir, bin path, marker that the code would create)."""
  ck = _checkpoint_copy(tmp_path)
  os.remove(ck / 'open_clip_model.safetensors')
  marker = tmp_path / 'code_ran'
  data = pickle.dumps({'logit_scale': _RunsCode(marker)}, protocol=2)
  weights = ck / 'open_clip_pytorch_model.bin'
  if zipped:  # torch >= 1.6's zip layout
    with zipfile.ZipFile(weights, 'w') as z:
      z.writestr('archive/data.pkl', data)
      z.writestr('archive/byteorder', 'little')
  else:  # the legacy pickle-only layout
    weights.write_bytes(data)
  return ck, weights, marker


def _launch_subprocess(argv, timeout=300, env=None):
  return subprocess.run([sys.executable, 'launch.py', *argv], cwd=ROOT,
                        env=env or _env(), capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope='module', params=['zip', 'legacy'])
def evil_run(request, mine, tmp_path_factory):
  """`python launch.py` on a malicious .bin (once per layout)."""
  tmp_path = tmp_path_factory.mktemp(f'evil_{request.param}')
  ck, weights, marker = _evil_checkpoint(tmp_path, request.param == 'zip')
  before = _listing(ck, mine.root, mine.workdir)
  proc = _launch_subprocess(_weights(mine, weights, ck, tmp_path / 'w'))
  return types.SimpleNamespace(
      kind=request.param, proc=proc, marker=marker, weights=weights,
      unchanged=_listing(ck, mine.root, mine.workdir) == before,
      lines=[l for l in proc.stderr.splitlines() if l.strip()])


def test_malicious_pickle_code_does_not_run(evil_run, mine):
  assert not evil_run.marker.exists()
  assert evil_run.proc.returncode != 0
  assert evil_run.unchanged
  assert _snapshot(mine.workdir) == mine.snap


def test_malicious_pickle_is_refused_in_one_line(evil_run):
  proc, lines = evil_run.proc, evil_run.lines
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert lines and lines[-1].startswith('error: '), lines[-5:]
  assert str(evil_run.weights) in lines[-1]
  assert sum(l.startswith('error: ') for l in lines) == 1


# ------------------------------------------------------------- workdirs --


def _can_mount():
  return (hasattr(os, 'geteuid') and os.geteuid() == 0 and
          shutil.which('mount') and shutil.which('umount'))


@contextlib.contextmanager
def _mount(target, *args):
  """`mount ARGS TARGET` for the block (root only), else skip."""
  if not _can_mount():
    pytest.skip('needs root and mount(8) to make a read-only / full file '
                'system')
  os.makedirs(target, exist_ok=True)
  done = subprocess.run(['mount', *args, str(target)], capture_output=True,
                        text=True, check=False)
  if done.returncode:
    pytest.skip(f'mount {" ".join(args)} failed: {done.stderr.strip()}')
  try:
    yield target
  finally:
    subprocess.run(['umount', '-l', str(target)], check=False)


@contextlib.contextmanager
def _read_only(path, tmp_path):
  """`path` made read-only: chmod, or (where chmod does not bind: root) a
  read-only bind mount of it; skips where neither works."""
  mode = os.stat(path).st_mode
  os.chmod(path, 0o555)
  try:
    if not os.access(path, os.W_OK):
      yield str(path)
      return
  finally:
    os.chmod(path, mode)
  view = tmp_path / (os.path.basename(str(path)) + '_ro')
  with _mount(view, '--bind', str(path)):
    done = subprocess.run(['mount', '-o', 'remount,ro,bind', str(view)],
                          capture_output=True, text=True, check=False)
    if done.returncode or os.access(view, os.W_OK):
      pytest.skip('chmod does not bind for root and a read-only bind mount '
                  f'failed: {done.stderr.strip()}')
    yield str(view)


def test_read_only_workdir(capsys, mine, tmp_path):
  copy = tmp_path / 'finished'
  shutil.copytree(mine.workdir, copy, symlinks=True)
  with _read_only(copy, tmp_path) as workdir:
    before = _listing(workdir)
    _refuses(capsys, mine, [_custom(mine.root), f'--workdir={workdir}'],
             '--workdir', workdir, 'not writable')
    assert _listing(workdir) == before


def test_read_only_cache_dir_is_read(capsys, mine, tmp_path):
  # A finished cache (data and pretraining built) on a read-only file
  # system is read without its locks (core/caches.py); until commit 0bbee99:
  # OSError: [Errno 30] Read-only file system: '<cache>/data/tfds/
  # mgtil_source/knee-32px-seed0-test20.lock', with its traceback.
  copy = tmp_path / 'cache'
  shutil.copytree(mine.workdir, copy, symlinks=True)
  with _read_only(copy, tmp_path) as cache:
    before = _listing(cache, mine.root)
    rc, err = _main(capsys, [_custom(mine.root),
                             f'--config.cache_dir={cache}',
                             '--config.train.steps_per_task=1',
                             f'--workdir={tmp_path / "w"}'])
    assert rc == 0, err[-2000:]
    assert 'Traceback' not in err
    assert _listing(cache, mine.root) == before
  assert not glob.glob(str(tmp_path / 'w' / 'pretrain_*'))  # a cache hit


def _fill(disk, leave=0):
  """Fills the file system of `disk`, leaving `leave` bytes."""
  free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
  fd = os.open(os.path.join(disk, 'filler'), os.O_WRONLY | os.O_CREAT)
  try:
    todo = max(0, free - leave) if leave else None
    chunk = b'\0' * 65536
    while todo is None or todo > 0:
      n = os.write(fd, chunk if todo is None else chunk[:min(todo, 65536)])
      if todo is not None:
        todo -= n
  except OSError as e:
    assert e.errno == errno.ENOSPC, e
  finally:
    os.close(fd)


def test_full_disk_before_anything_is_written(capsys, mine, tmp_path):
  with _mount(tmp_path / 'disk', '-t', 'tmpfs', '-o', 'size=64k',
              'tmpfs') as disk:
    _fill(disk)
    line = _refuses(capsys, mine, [_custom(mine.root),
                                   f'--config.cache_dir={mine.workdir}',
                                   f'--workdir={disk / "w"}'],
                    'No space left on device')
    assert str(disk / 'w') in line, line


_NOISE = ('Traceback', 'Exception ignored', 'never retrieved',
          'stack trace')


def _noise(stderr):
  """The lines of `stderr` that are tracebacks or asyncio's leftovers."""
  return [l for l in stderr.splitlines() if any(n in l for n in _NOISE)]


def test_full_disk_at_the_first_checkpoint(mine, tmp_path):
  with _mount(tmp_path / 'disk', '-t', 'tmpfs', '-o', 'size=1m',
              'tmpfs') as disk:
    _fill(disk, leave=300_000)
    before = _listing(mine.root, mine.workdir)
    proc = _launch_subprocess([_custom(mine.root),
                               f'--config.cache_dir={mine.workdir}',
                               f'--workdir={disk / "w"}'])
    assert _listing(mine.root, mine.workdir) == before
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2, (proc.returncode, lines[-5:])
  assert not _noise(proc.stderr), _noise(proc.stderr)[:5]
  assert lines[-1].startswith('error: ') and 'No space left' in lines[-1]
  assert str(disk / 'w') in lines[-1], lines[-1]


def _damaged_copy(mine, tmp_path, steps, pattern='state/**/d/*'):
  """A copy of the finished workdir with the array files (`pattern` in each
  step folder) of checkpoint `steps` ('newest' or 'all') deleted; (copy,
  [step numbers])."""
  copy = tmp_path / 'run'
  shutil.copytree(mine.workdir, copy, symlinks=True)
  numbers = sorted(int(s) for s in os.listdir(copy / 'checkpoints')
                   if s.isdigit())
  assert len(numbers) >= 2, numbers
  for s in numbers[-1:] if steps == 'newest' else numbers:
    files = glob.glob(str(copy / 'checkpoints' / str(s) / pattern),
                      recursive=True)
    assert files
    for f in files:
      os.remove(f)
  return copy, numbers


def _cli_on_damaged(mine, tmp_path, steps, pattern='state/**/d/*'):
  """`python launch.py` (the module's config) on a damaged copy of its
  finished workdir, with listings before and after."""
  copy, numbers = _damaged_copy(mine, tmp_path, steps, pattern)
  before = (_listing(copy), _listing(copy / 'checkpoints'),
            _listing(mine.root, mine.workdir))
  proc = _launch_subprocess([_custom(mine.root), f'--workdir={copy}'])
  after = (_listing(copy), _listing(copy / 'checkpoints'),
           _listing(mine.root, mine.workdir))
  return types.SimpleNamespace(
      copy=copy, steps=numbers, proc=proc, before=before, after=after,
      lines=[l for l in proc.stderr.splitlines() if l.strip()])


@pytest.fixture(scope='module')
def resumed(mine, tmp_path_factory):
  """The newest checkpoint's array files gone; the run started again."""
  return _cli_on_damaged(mine, tmp_path_factory.mktemp('resumed'), 'newest')


@pytest.fixture(scope='module')
def unreadable(mine, tmp_path_factory):
  """Every checkpoint's array files gone; the run started again."""
  return _cli_on_damaged(mine, tmp_path_factory.mktemp('unreadable'), 'all')


@pytest.mark.slow  # resumes and finishes task 2 (~20 s)
def test_checkpoint_partly_missing_resumes_from_an_earlier_step(resumed):
  # What the code does: the unreadable newest step is moved aside with a
  # warning naming it and the run resumes from the step before it.
  run = resumed
  assert run.proc.returncode == 0, run.lines[-5:]
  assert not any(l.startswith('error: ') for l in run.lines)
  warned = [l for l in run.lines if 'is unreadable; moved to' in l]
  assert len(warned) == 1, run.lines[-5:]
  assert os.path.join('checkpoints', str(run.steps[-1])) in warned[0]
  assert f'resuming from step {run.steps[-2]} instead' in warned[0]
  aside = os.listdir(run.copy / 'checkpoints_corrupt')
  assert [a.split('-')[0] for a in aside] == [str(run.steps[-1])]
  assert (run.copy / 'results.json').exists()
  assert run.after[2] == run.before[2]  # data root and the original run


@pytest.mark.slow  # (shares the resumed run)
def test_checkpoint_resume_is_quiet(resumed):
  assert resumed.proc.returncode == 0
  assert not _noise(resumed.proc.stderr), (len(resumed.lines),
                                           _noise(resumed.proc.stderr)[:5])


def test_checkpoint_missing_in_every_step_refuses(unreadable):
  run = unreadable
  assert run.proc.returncode == 2, run.lines[-5:]
  # (The asyncio noise of test_checkpoint_refusal_is_quiet may share the
  # error's line: threads write to stderr at once.)
  errors = [l[l.index('error: '):] for l in run.lines if 'error: ' in l]
  assert len(errors) == 1, run.lines[-5:]
  for name in (str(run.copy / 'checkpoints'), 'no readable checkpoint',
               'delete the folder'):
    assert name in errors[0], errors[0]
  assert run.after[1] == run.before[1]  # nothing moved, nothing deleted
  assert not os.path.exists(run.copy / 'checkpoints_corrupt')
  assert run.after[2] == run.before[2]


def test_refused_rerun_leaves_the_workdir_as_it_was(unreadable):
  before, after = unreadable.before[0], unreadable.after[0]
  changed = sorted(k for k in set(before) | set(after)
                   if before.get(k) != after.get(k))
  assert not changed, changed


def test_checkpoint_refusal_is_quiet(unreadable, mine, tmp_path):
  proc = unreadable.proc
  for attempt in range(3):
    if attempt:  # the first one was quiet: the noise is racy, look again
      proc = _cli_on_damaged(mine, tmp_path / str(attempt), 'all').proc
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert not _noise(proc.stderr), (len(lines), _noise(proc.stderr)[:5])
    assert lines[-1].startswith('error: '), lines[-3:]


def test_checkpoint_refusal_message_is_readable(mine, tmp_path):
  run = _cli_on_damaged(mine, tmp_path, 'all',
                        pattern='state/ocdbt.process_0/d/*')
  errors = [l[l.index('error: '):] for l in run.lines if 'error: ' in l]
  assert run.proc.returncode == 2 and len(errors) == 1, run.lines[-3:]
  assert 'no readable checkpoint' in errors[0]
  assert '<bound method' not in errors[0] and 'pybind11' not in errors[0], (
      errors[0])


# --------------------------------------------------------- multi-process --


def test_coordinator_that_never_answers(mine, tmp_path):
  # Until launch.py waited MGTIL_SYNC_TIMEOUT_S for the coordinator itself:
  # still running after 120 s (jax's default initialization_timeout is
  # 300 s), then SIGABRT (exit 134) from C++, "DEADLINE_EXCEEDED ...
  # RegisterTask" and a "*** Check failure stack trace ***", no error: line.
  import portpicker  # pylint: disable=g-import-not-at-top
  port = portpicker.pick_unused_port()
  env = dict(_env(), MGTIL_SYNC_TIMEOUT_S='3')
  start = time.time()
  try:
    proc = _launch_subprocess([
        _custom(mine.root), f'--config.cache_dir={mine.workdir}',
        f'--workdir={tmp_path / "w"}', '--multihost',
        f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
        '--process_id=1'], timeout=60, env=env)
  except subprocess.TimeoutExpired:
    pytest.fail(f'still running after {time.time() - start:.0f} s')
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode not in (0, None)
  assert 'Traceback' not in proc.stderr and 'stack trace' not in proc.stderr
  assert lines[-1].startswith('error: ') and str(port) in lines[-1], lines[-5:]
