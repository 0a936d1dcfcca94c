"""A 2-process CPU run (jax.distributed on localhost) agrees with the
1-process run of the same command: the default method (ft), and every method
whose run keeps host-side state (retrieval reference sets, corpus reference
sets, exemplar memories, Fisher diagonals), which must be the same on any
number of processes (docs/retrieval.md).

Also a probe (`python tests/test_multiprocess.py towers OUT WORKDIR [PORT
PROCESS_ID]`) for the retrieval towers on one or two processes.
"""

import glob
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/mgtil_synth.py:runlocal,tasks=2'
# Methods with host-side state: the reference set of the retrieval memory
# (primed, primed_uni), a fixed corpus reference set (zscl), the Fisher
# diagonal (ewc). One `--compare` run per process count keeps the cost at
# one process start-up and one pretraining; each method still compiles its
# own step, so the test costs about eight 2-task runs. icarl (herded
# exemplars) belongs here too, but its 2-process run stops today at the
# task end: train.select_exemplars fetches a jit output that spans both
# processes' devices (with out_shardings=exp.replicated_sharding on that jit
# it runs and matches: same exemplars and metrics). The adapter methods'
# task-end passes
# (train.adapter_task_end) fetch the same way and are not covered yet.
HOST_STATE_METHODS = ('primed', 'primed_uni', 'zscl', 'ewc')


def _env():
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return env


def _launch(workdir, extra=()):
  return [sys.executable, 'launch.py', f'--config={CONFIG}',
          f'--workdir={workdir}', *extra]


def _communicate(procs, timeout: float) -> list[str]:
  """The outputs of `procs`; if they have not all ended `timeout` seconds
  from now, kills every one and fails with the end of each one's output (a
  hang must fail fast, not eat the CI budget)."""
  deadline = time.monotonic() + timeout
  outs = [None] * len(procs)
  try:
    for i, p in enumerate(procs):
      outs[i] = p.communicate(
          timeout=max(1.0, deadline - time.monotonic()))[0].decode()
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    tails = [(p.communicate()[0] or b'').decode()[-1500:] for p in procs]
    pytest.fail(f'{len(procs)} processes still running after {timeout:.0f} s '
                '(killed); ends of their outputs:\n' + '\n'.join(
                    f'--- process {i} ---\n{t}' for i, t in enumerate(tails)))
  return outs


def _run_one(args, env, timeout: float):
  """Runs `args` as one process, failing after `timeout` seconds."""
  proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  out = _communicate([proc], timeout)[0]
  assert proc.returncode == 0, out[-3000:]


def _run_two(args_fn, env, timeout: float):
  """Runs args_fn(extra) as two jax.distributed processes on localhost,
  failing (both killed) after `timeout` seconds."""
  import portpicker  # pylint: disable=g-import-not-at-top
  port = portpicker.pick_unused_port()
  procs = [subprocess.Popen(
      args_fn(['--multihost', f'--coordinator_address=localhost:{port}',
               '--num_processes=2', f'--process_id={i}']),
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  for p, out in zip(procs, _communicate(procs, timeout)):
    assert p.returncode == 0, out[-3000:]


def _results(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def _reference_stats(workdir):
  """The reference-set stats of each task (latest checkpoint's metadata)."""
  steps = sorted((p for p in glob.glob(os.path.join(workdir, 'checkpoints',
                                                    '*'))
                  if os.path.basename(p).isdigit()),
                 key=lambda p: int(os.path.basename(p)))
  with open(os.path.join(steps[-1], 'meta', 'metadata')) as f:
    return json.load(f).get('reference', [])


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from mgtil_jax import checkpoint  # pylint: disable=g-import-not-at-top
  env = _env()
  one = str(tmp_path / 'one')
  subprocess.run(_launch(one), cwd=ROOT, env=env, check=True,
                 capture_output=True)
  two = str(tmp_path / 'two')
  _run_two(lambda extra: _launch(two, extra), env)

  r1, r2 = _results(one), _results(two)
  assert r1['devices']['processes'] == 1 and r2['devices']['processes'] == 2
  assert r2['devices']['count'] == 2
  np.testing.assert_allclose(r2['accuracy_matrix'], r1['accuracy_matrix'],
                             atol=1e-6)
  p1, _ = checkpoint.load_latest_params(os.path.join(one, 'checkpoints'))
  p2, _ = checkpoint.load_latest_params(os.path.join(two, 'checkpoints'))
  # Cross-process reductions sum in another order; Adam divides by sqrt(v),
  # so on near-zero gradients that rounding noise becomes a fraction of a
  # step (lr = 1e-3 here). 1e-4 is a tenth of one step: a real mismatch (a
  # wrong shard, a missing all-reduce) moves params by whole steps.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3,
                                                       atol=1e-4), p2, p1)
  loss1 = [l for c in r1['train_curves'] for _, l in c['loss']]
  loss2 = [l for c in r2['train_curves'] for _, l in c['loss']]
  np.testing.assert_allclose(loss2, loss1, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get('MGTIL_MULTIPROCESS_METHODS'),
    reason='set MGTIL_MULTIPROCESS_METHODS=1: the grouped two-process '
    'comparison takes ~7 min, and it once stalled with both processes '
    'waiting before the second method (primed_uni) created its workdir; '
    'until that is found it stays out of CI (issue 17)')
def test_host_state_methods_two_processes_match_one(tmp_path):
  """Identical results.json metrics and reference sets for every method with
  host-side state. Both runs start from one initial model (a shared
  config.cache_dir holds the pretrained model): the embedded benchmark
  pretrains it in-run, and that training, like any, sums gradients across
  devices in another order on two processes; retrieval from the initial
  model is then a discontinuous function of its last bits (docs/retrieval.md)."""
  env = _env()
  cache = str(tmp_path / 'cache')
  names = ','.join(HOST_STATE_METHODS)

  def args(workdir, extra=()):
    return _launch(workdir, [f'--config.cache_dir={cache}',
                             f'--compare={names}', *extra])

  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  subprocess.run(args(one), cwd=ROOT, env=env, check=True,
                 capture_output=True)
  _run_two(lambda extra: args(two, extra), env)

  for name in HOST_STATE_METHODS:
    r1 = _results(os.path.join(one, name))
    r2 = _results(os.path.join(two, name))
    assert (r1['devices']['processes'], r2['devices']['processes']) == (1, 2)
    for key in ('accuracy_matrix', 'zero_shot'):
      np.testing.assert_allclose(r2[key], r1[key], atol=1e-6,
                                 err_msg=f'{name}: {key}')
    # AUC ranks logits across test images, and the runlocal model's logits
    # of different images lie within float rounding of each other (exact
    # ties count one half). The trained weights of the two runs agree only
    # to rounding (cross-device sums), so a few pairs may tie or swap: each
    # moves a macro AUC entry by 1/768 or 1/384 here (primed, observed:
    # 0.0026; 0.02 is ~15 pairs).
    np.testing.assert_allclose(r2['auc_matrix'], r1['auc_matrix'], atol=0.02,
                               err_msg=f'{name}: auc_matrix')
    assert r2['summary'].keys() == r1['summary'].keys()
    for key, value in r1['summary'].items():
      if value is None:
        assert r2['summary'][key] is None, (name, key)
      else:
        np.testing.assert_allclose(r2['summary'][key], value,
                                   atol=0.02 if key == 'auc' else 1e-6,
                                   err_msg=f'{name}: summary {key}')
    loss1 = [l for c in r1['train_curves'] for _, l in c['loss']]
    loss2 = [l for c in r2['train_curves'] for _, l in c['loss']]
    # The steps see the same batches; only the cross-device sums differ
    # (zscl: 1.6e-4 after its weight ensembling). Another reference set
    # moved primed's losses by 5e-3 to 8e-3 (issue 17).
    np.testing.assert_allclose(loss2, loss1, rtol=1e-3, err_msg=name)
    ref1 = _reference_stats(os.path.join(one, name))
    ref2 = _reference_stats(os.path.join(two, name))
    if name.startswith('primed'):
      assert len(ref1) == 2, ref1
    assert [s.get('rows_sha256') for s in ref2] == [
        s.get('rows_sha256') for s in ref1], name
    assert [s.get('domains') for s in ref2] == [
        s.get('domains') for s in ref1], name


# ------------------------------------------------- retrieval towers probe --


def _towers_probe(out, workdir, port=None, process_id=None):
  """Embeds 300 texts and images with the retrieval towers (tiny model,
  params of a fixed seed) on this process count, and places a global batch
  of row ids; process 0 saves what every row got."""
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  if port is not None:
    # A loaded CI machine can starve a process's heartbeats for minutes.
    jax.distributed.initialize(f'localhost:{port}', 2, int(process_id),
                               heartbeat_timeout_seconds=600)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from configs import mgtil_synth  # pylint: disable=g-import-not-at-top
  from mgtil_jax import train  # pylint: disable=g-import-not-at-top
  from mgtil_jax.retrieval import embed, queries  # pylint: disable=g-import-not-at-top
  cfg = mgtil_synth.get_config('runlocal,tasks=1')
  cfg.model.init = 'random'
  exp = train.setup(cfg, workdir)
  params = train.init_params(exp, 0)
  towers = embed.ClipTowers(exp, batch_size=256)
  texts = [q.text for q in queries.synth_pool(cfg.retrieval.query_template)]
  texts = (texts * 4)[:300]
  images = np.random.default_rng(0).integers(0, 255, (300, 32, 32, 3),
                                              np.uint8)
  text = towers.text(params, exp.tokenizer(texts))
  image = towers.image(params, images)
  rows = np.arange(64, dtype=np.int32)
  placed = exp.put_batch({'row': rows})['row']
  gathered = np.asarray(multihost_utils.process_allgather(placed, tiled=True))
  if jax.process_index() == 0:
    np.savez(out, text=text, image=image, rows=gathered,
             processes=jax.process_count(), per_call=towers.batch_size)


@pytest.mark.slow
def test_retrieval_towers_same_vectors_on_two_processes(tmp_path):
  """Caption / query / image vectors of the retrieval memory are bitwise the
  same on one and two processes (the old per-call batch split 256 rows into
  128 per device on two processes and changed the text vectors' last bits),
  and a placed global batch holds every row once."""
  env = _env()
  here = os.path.abspath(__file__)
  one = str(tmp_path / 'one.npz')
  subprocess.run([sys.executable, here, 'towers', one, str(tmp_path / 'w1')],
                 cwd=ROOT, env=env, check=True, capture_output=True)
  two = str(tmp_path / 'two.npz')
  import portpicker  # pylint: disable=g-import-not-at-top
  port = str(portpicker.pick_unused_port())
  procs = [subprocess.Popen([sys.executable, here, 'towers', two,
                             str(tmp_path / 'w2'), port, str(i)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT) for i in range(2)]
  for p in procs:
    out = p.communicate(timeout=600)[0].decode()
    assert p.returncode == 0, out[-3000:]
  a, b = np.load(one), np.load(two)
  assert (int(a['processes']), int(b['processes'])) == (1, 2)
  assert (int(a['per_call']), int(b['per_call'])) == (256, 512)
  np.testing.assert_array_equal(b['text'], a['text'])
  np.testing.assert_array_equal(b['image'], a['image'])
  np.testing.assert_array_equal(b['rows'], np.arange(64))
  np.testing.assert_array_equal(a['rows'], np.arange(64))


# ------------------------------------------------------ out-of-step probe --


def _hosts_probe(out, port, process_id):
  """Two processes: a barrier both reach, process 0's value on both, then a
  barrier only process 0 reaches (process 1 waits at another): each must
  fail within the short timeout, naming its barrier, instead of hanging."""
  import time  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(f'localhost:{port}', 2, int(process_id),
                             heartbeat_timeout_seconds=600)
  from mgtil_jax import hosts  # pylint: disable=g-import-not-at-top
  record = {}
  hosts.sync('both')
  record['value'] = hosts.lead_value('value', {'from': jax.process_index()})
  record['exists'] = hosts.lead_exists(
      out if jax.process_index() == 0 else ROOT, 'probe_file')
  start = time.time()
  try:
    hosts.sync('only_lead' if jax.process_index() == 0 else 'elsewhere',
               timeout=3)
    record['error'] = None
  except hosts.OutOfStepError as e:
    record['error'] = str(e)
  record['waited_s'] = time.time() - start
  with open(f'{out}.{jax.process_index()}.json.tmp', 'w') as f:
    json.dump(record, f)
  os.replace(f'{out}.{jax.process_index()}.json.tmp',
             f'{out}.{jax.process_index()}.json')
  if jax.process_index() == 0:  # it hosts the coordination service
    while not os.path.exists(f'{out}.1.json') and time.time() - start < 60:
      time.sleep(0.2)
  # Out of step, jax.distributed's shutdown would wait at its own barrier;
  # the records are all the test needs.
  os._exit(0)  # pylint: disable=protected-access


@pytest.mark.slow
def test_out_of_step_processes_fail_fast(tmp_path):
  """hosts.sync on two processes: a barrier one process never reaches fails
  on each with one line naming it (the grouped comparison once waited
  forever between two methods); hosts.lead_value hands process 0's value to
  both."""
  env = _env()
  here = os.path.abspath(__file__)
  out = str(tmp_path / 'probe')
  import portpicker  # pylint: disable=g-import-not-at-top
  port = str(portpicker.pick_unused_port())
  procs = [subprocess.Popen([sys.executable, here, 'hosts', out, port,
                             str(i)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  outs = _communicate(procs, timeout=180)
  records = []
  for i, (p, text) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, text[-3000:]
    with open(f'{out}.{i}.json') as f:
      records.append(json.load(f))
  assert [r['value'] for r in records] == [{'from': 0}, {'from': 0}]
  # Process 0 looked for a file that does not exist; process 1 for one that
  # does (the repo root): both get process 0's answer.
  assert [r['exists'] for r in records] == [False, False]
  for r, name in zip(records, ('only_lead', 'elsewhere')):
    assert r['error'] is not None and f"'{name}'" in r['error'], r
    assert 'another process never reached it' in r['error'], r
    assert r['waited_s'] < 60, r


if __name__ == '__main__':
  if sys.argv[1] == 'towers':
    _towers_probe(*sys.argv[2:])
  elif sys.argv[1] == 'hosts':
    _hosts_probe(*sys.argv[2:])
