"""Bad inputs a user can give: each is refused with exit code 2 and one line
on stderr naming the offender, no traceback, and nothing good is touched (a
finished workdir's results.json and checkpoints stay byte-identical).

Most cases call `launch.main_cli` in this process (fast); the workdir lock
and the real command line are checked with subprocesses.
"""

import hashlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import launch  # pylint: disable=g-import-not-at-top,wrong-import-position

# One finished run is built per module (~40 s of CPU); the 45 refusals then
# take well under a second each, except the divergence run and the two real
# command lines.
pytestmark = pytest.mark.slow

GOOD = 'configs/mgtil_synth.py:runlocal,tasks=2'


def _snapshot(workdir):
  """Hashes of results.json, config.json and every checkpoint file."""
  out = {}
  for base, _, files in os.walk(workdir):
    for f in files:
      path = os.path.join(base, f)
      rel = os.path.relpath(path, workdir)
      if rel.startswith(('results.json', 'config.json', 'checkpoints')):
        with open(path, 'rb') as fh:
          out[rel] = hashlib.sha256(fh.read()).hexdigest()
  return out


@pytest.fixture(scope='module')
def good(tmp_path_factory):
  """One finished run (2 tasks, runlocal) and its snapshot."""
  workdir = str(tmp_path_factory.mktemp('good') / 'run')
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    assert launch.main_cli(['launch.py', f'--config={GOOD}',
                            f'--workdir={workdir}']) == 0
  finally:
    os.chdir(cwd)
  assert os.path.exists(os.path.join(workdir, 'results.json'))
  return workdir, _snapshot(workdir)


def _refused(capsys, good, argv, *names, code=2):
  """Runs launch with argv; asserts a one-line refusal naming `names`."""
  workdir, before = good
  capsys.readouterr()
  cwd = os.getcwd()
  os.chdir(ROOT)
  start = time.time()
  try:
    rc = launch.main_cli(['launch.py'] + argv)
  finally:
    os.chdir(cwd)
  out, err = capsys.readouterr()
  lines = [l for l in err.splitlines() if l.strip()]
  assert rc == code, (rc, err[-2000:])
  assert 'Traceback' not in out + err, err[-2000:]
  errors = [l for l in lines if l.startswith('error: ')]
  assert len(errors) == 1, err[-2000:]
  for name in names:
    assert name in errors[0], errors[0]
  assert _snapshot(workdir) == before  # the good run is untouched
  return errors[0], time.time() - start


# (config overrides / config arguments, text the error line must contain)
CONFIG_CASES = [
    (['--config.train.lr=nan'], 'config.train.lr'),
    (['--config.train.lr=inf'], 'config.train.lr'),
    (['--config.train.lr=0'], 'config.train.lr'),
    (['--config.train.lr=-0.001'], 'config.train.lr'),
    (['--config.train.steps_per_task=0'], 'config.train.steps_per_task'),
    (['--config.train.batch_size=0'], 'config.train.batch_size'),
    (['--config.train.batch_size=-16'], 'config.train.batch_size'),
    (['--config.train.log_every=0'], 'config.train.log_every'),
    (['--config.train.warmup_steps=-1'], 'config.train.warmup_steps'),
    (['--config.train.weight_decay=nan'], 'config.train.weight_decay'),
    (['--config.train.label_smoothing=1.5'], 'config.train.label_smoothing'),
    (['--config.pretrain.batch_size=-32'], 'config.pretrain.batch_size'),
    (['--config.pretrain.steps=0'], 'config.pretrain.steps'),
    (['--config.pretrain.lr=nan'], 'config.pretrain.lr'),
    (['--config.checkpoint.every_steps=0'], 'config.checkpoint.every_steps'),
    (['--config.checkpoint.keep=0'], 'config.checkpoint.keep'),
    (['--config.seed=-1'], 'config.seed'),
    (['--config.data.seed=-3'], 'config.data.seed'),
    (['--config.data.image_size=0'], 'config.data.image_size'),
    (['--config.eval.batch_size=0'], 'config.eval.batch_size'),
    (['--config.mesh.data=0'], 'config.mesh.data'),
    (['--config.model.dtype=float16'], 'config.model.dtype'),
    (['--config.model.preset=huge'], 'huge'),
    (['--config.model.init=/no/such/checkpoint'], 'config.model.init'),
    (['--config.method_kwargs.wise_alpha=2.0'],
     'config.method_kwargs.wise_alpha'),
    (['--config.method_kwargs.teacher=oracle'], 'config.method_kwargs.teacher'),
    (['--config.method_kwargs.ewc_batches=0'],
     'config.method_kwargs.ewc_batches'),
]


@pytest.mark.parametrize('overrides,name', CONFIG_CASES,
                         ids=[c[0][0].split('=')[0][9:] + '=' +
                              c[0][0].split('=')[1] for c in CONFIG_CASES])
def test_bad_config_field(capsys, good, tmp_path, overrides, name):
  line, seconds = _refused(
      capsys, good, [f'--config={GOOD}', *overrides,
                     f'--workdir={tmp_path / "w"}'], name, 'expected')
  assert seconds < 30  # refused up front, before data or model work
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')


@pytest.mark.parametrize('argv,names', [
    (['--config=configs/no_such.py'], ['configs/no_such.py']),
    (['--config=configs/mgtil_synth.py:runlocal,bogus=1'], ['bogus']),
    (['--config=configs/mgtil_synth.py:runlocal,method=sgd'],
     ['config.method', 'sgd']),
    (['--config=configs/mgtil_synth.py:runlocal,steps=-1'],
     ['config.train.steps_per_task']),
    ([f'--config={GOOD}', '--config.train.nope=1'], ['--config.train.nope']),
    ([f'--config={GOOD}', '--config.train.lr=abc'],
     ['--config.train.lr', 'abc']),
    ([f'--config={GOOD}', '--no_such_flag=1'], ['no_such_flag']),
], ids=['missing-file', 'unknown-arg', 'unknown-method', 'negative-steps',
        'unknown-field', 'mistyped-value', 'unknown-flag'])
def test_bad_command_line(capsys, good, tmp_path, argv, names):
  _refused(capsys, good, argv + [f'--workdir={tmp_path / "w"}'], *names)


def test_workdir_parent_missing(capsys, good, tmp_path):
  _refused(capsys, good, [f'--config={GOOD}',
                          f'--workdir={tmp_path / "no" / "such" / "w"}'],
           '--workdir', 'does not exist')


def test_workdir_is_a_file(capsys, good, tmp_path):
  (tmp_path / 'file').write_text('x')
  _refused(capsys, good, [f'--config={GOOD}',
                          f'--workdir={tmp_path / "file"}'],
           '--workdir', 'not a directory')


@pytest.mark.parametrize('argv,fields', [
    (['--config.train.lr=0.001'], ['train.lr']),
    (['--config.train.steps_per_task=3'], ['train.steps_per_task']),
    (['--config.seed=7', '--config.train.lr=0.002'], ['seed', 'train.lr']),
], ids=['lr', 'steps', 'seed+lr'])
def test_rerun_with_another_config_refuses(capsys, good, argv, fields):
  line, _ = _refused(capsys, good, [f'--config={GOOD}', *argv,
                                    f'--workdir={good[0]}'],
                     *fields, 'new --workdir')


def test_rerun_with_fewer_tasks_refuses(capsys, good):
  _refused(capsys, good, ['--config=configs/mgtil_synth.py:runlocal,tasks=1',
                          f'--workdir={good[0]}'], 'data.num_tasks')


def _task_folder(root, name, classes):
  rng = np.random.default_rng(0)
  for c, n in classes.items():
    d = root / name / c
    d.mkdir(parents=True)
    for i in range(n):
      Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
          d / f'{i}.png')


def test_empty_class_folder(capsys, good, tmp_path):
  _task_folder(tmp_path, 'knee', {'normal': 4, 'effusion': 4, 'tear': 0})
  _refused(capsys, good, [
      f'--config=configs/custom.py:root={tmp_path},tasks=knee,runlocal',
      f'--workdir={tmp_path / "w"}'], os.path.join('knee', 'tear'),
           'no image files')


def test_single_label_table(capsys, good, tmp_path):
  _task_folder(tmp_path, 'skin', {'img': 4})
  (tmp_path / 'skin' / 'labels.csv').write_text(
      'path,label\n' + ''.join(f'img/{i}.png,nevus\n' for i in range(4)))
  _refused(capsys, good, [
      f'--config=configs/custom.py:root={tmp_path},tasks=skin,kind=csv,'
      'runlocal', f'--workdir={tmp_path / "w"}'],
           os.path.join('skin', 'labels.csv'), 'at least 2 classes')


def test_single_class_json(capsys, good, tmp_path):
  _task_folder(tmp_path, 'eye', {'img': 4})
  (tmp_path / 'eye' / 'labels.json').write_text(
      '{"classes": ["glaucoma"], "items": [' + ', '.join(
          f'{{"path": "img/{i}.png", "label": 0}}' for i in range(4)) + ']}')
  _refused(capsys, good, [
      f'--config=configs/custom.py:root={tmp_path},tasks=eye,kind=json,'
      'runlocal', f'--workdir={tmp_path / "w"}'],
           os.path.join('eye', 'labels.json'), 'at least 2 classes')


def test_divergence_stops_naming_the_step(capsys, good, tmp_path):
  # lr = 1e39 is a finite number, but not in float32: the first update
  # makes the params infinite. The good run's caches skip pretraining.
  line, _ = _refused(capsys, good, [
      f'--config={GOOD}', '--config.train.lr=1e39',
      f'--config.cache_dir={good[0]}', f'--workdir={tmp_path / "w"}'],
                     'diverged', 'task 1', 'step 2')
  # The last good checkpoint (the initial one) stays.
  steps = os.listdir(tmp_path / 'w' / 'checkpoints')
  assert '0' in steps and all(s == '0' for s in steps if s.isdigit())


def _env():
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)


def test_second_run_on_a_locked_workdir(capsys, good, tmp_path):
  workdir = tmp_path / 'w'
  holder = subprocess.Popen([sys.executable, '-c', (
      'import sys, time; sys.path.insert(0, sys.argv[1]);'
      'from mgtil_jax.training import workdir;'
      'cm = workdir.lock(sys.argv[2]); cm.__enter__();'
      'print("locked", flush=True); time.sleep(120)'), ROOT, str(workdir)],
                            env=_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    _refused(capsys, good, [f'--config={GOOD}', f'--workdir={workdir}'],
             'in use by pid', str(holder.pid))
  finally:
    holder.kill()
    holder.wait()


def test_real_command_line(good, tmp_path):
  proc = subprocess.run(
      [sys.executable, 'launch.py', f'--config={GOOD}',
       '--config.checkpoint.every_steps=0', f'--workdir={tmp_path / "w"}'],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      'error: config.checkpoint.every_steps: expected a positive integer, '
      'got 0']
  debug = subprocess.run(
      [sys.executable, 'launch.py', f'--config={GOOD}', '--debug',
       '--config.checkpoint.every_steps=0', f'--workdir={tmp_path / "w"}'],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert debug.returncode == 2 and "Traceback" in debug.stderr
  assert debug.stderr.strip().splitlines()[-1].startswith("error: ")


# Issue 12: inputs a method needs, refused in validation (seconds), before
# any data build or pretraining.
@pytest.mark.parametrize('args, names', [
    (',method=primed', ('corpus=', "method 'primed'")),
    (',method=zscl,corpus=/nonexistent/captions.jsonl',
     ('corpus:', '/nonexistent/captions.jsonl')),
    (',method=primed,pool=/nonexistent/pool.json',
     ('pool:', '/nonexistent/pool.json')),
])
def test_missing_corpus_or_pool(capsys, good, tmp_path, args, names):
  _task_folder(tmp_path, 'knee', {'normal': 3, 'effusion': 3})
  _, took = _refused(capsys, good, [
      f'--config=configs/custom.py:root={tmp_path},tasks=knee,runlocal' +
      args, f'--workdir={tmp_path / "w"}'], *names)
  assert took < 30, took
  assert not os.path.exists(tmp_path / 'w' / 'data')


def test_missing_data_root(capsys, good, tmp_path):
  _refused(capsys, good, [
      f'--config=configs/real_mini.py:root={tmp_path / "nope"},runlocal',
      f'--workdir={tmp_path / "w"}'], 'root', str(tmp_path / 'nope'))
