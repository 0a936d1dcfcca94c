"""Tests for mgtil_jax.compare: seeds, spread, failures and stale results.

train.run is replaced by a stub that writes a results.json from a fixed
accuracy matrix, so no model is trained; the end-to-end path through the
real trainer is tests/test_methods.py::test_methods_run_end_to_end_and_are_tabulated.
"""

import json
import os

import numpy as np
import pytest

from configs import mgtil_synth
from mgtil_jax.entry import compare
from mgtil_jax.criteria import metrics
from mgtil_jax.core import stats
from mgtil_jax import training as train


def _matrix(method, seed):
  base = {'ft': 0.5, 'zscl': 0.6, 'primed': 0.7, 'zeroshot': 0.4}[method]
  rng = np.random.default_rng([seed, len(method)])
  return (base + rng.uniform(-0.05, 0.05, (3, 3))).tolist()


@pytest.fixture
def fake_run(monkeypatch):
  calls = []

  def run(config, workdir):
    calls.append((config.method, config.seed, workdir))
    if not os.path.isdir(os.path.dirname(workdir)):  # as validation.validate
      raise FileNotFoundError(f'parent of {workdir} does not exist')
    if config.method == 'zeroshot' and config.seed == 43:
      raise RuntimeError('out of memory on seed 43\nsecond line')
    acc = _matrix(config.method, config.seed)
    res = {'method': config.method, 'benchmark': config.data.name,
           'tasks': [{'name': f't{i}'} for i in range(3)],
           'zero_shot': [0.3, 0.3, 0.3], 'accuracy_matrix': acc,
           'summary': dict(metrics.continual_metrics(acc), acc=np.mean(acc[-1]),
                           auc=0.9),
           'config': config.to_dict(), 'wall_time_s': 10.0 + config.seed}
    os.mkdir(workdir)
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(res, f, default=list)
    return res

  monkeypatch.setattr(train, 'run', run)
  return calls


def _config():
  return mgtil_synth.get_config('runlocal,tasks=3')


def test_seeds_layout_spread_and_paired_differences(tmp_path, fake_run):
  config = _config()
  names = ('ft', 'zscl', 'primed')
  table = compare.compare(config, str(tmp_path), names, seeds=3)
  seeds = [config.seed, config.seed + 1, config.seed + 2]
  assert table['seeds'] == seeds and not table['failed']
  for s in seeds:
    for n in names:
      assert (tmp_path / f'seed_{s}' / n / 'results.json').exists()
  row = table['methods']['primed']
  # Reference: numpy over the three seeds' own continual_metrics.
  lasts = [np.mean(_matrix('primed', s)[-1]) for s in seeds]
  assert row['summary']['last'] == pytest.approx(np.mean(lasts))
  assert row['summary_std']['last'] == pytest.approx(np.std(lasts, ddof=1))
  lo, hi = row['ci']['last']
  assert lo < np.mean(lasts) < hi
  assert row['n_seeds'] == 3 and sorted(row['per_seed']) == [str(s)
                                                              for s in seeds]
  # Paired differences: primed - ft per seed and task, as stats computes.
  d = row['diff']['ft']['last']
  ref = stats.paired_bootstrap(
      [_matrix('primed', s)[-1] for s in seeds],
      [_matrix('ft', s)[-1] for s in seeds])
  assert d == ref and d['mean'] == pytest.approx(0.2, abs=0.03)
  assert 'ft' not in table['methods']['ft']['diff']
  assert 'zscl' in table['methods']['ft']['diff']
  md = (tmp_path / 'comparison.md').read_text()
  assert '±' in md and 'Paired difference vs ft' in md
  assert 'different benchmark' in md and '58.3 / 73.1 / 82.1' in md
  # Resuming runs nothing again.
  n_calls = len(fake_run)
  again = compare.compare(config, str(tmp_path), names, seeds=3)
  assert len(fake_run) == n_calls
  assert again['methods']['primed']['summary'] == row['summary']


def test_one_seed_keeps_the_flat_layout_and_the_runs_own_numbers(
    tmp_path, fake_run):
  config = _config()
  table = compare.compare(config, str(tmp_path), ('ft',))
  res = json.loads((tmp_path / 'ft' / 'results.json').read_text())
  assert table['methods']['ft']['summary'] == res['summary']
  assert table['methods']['ft']['summary_std']['last'] is None
  assert fake_run == [('ft', config.seed, str(tmp_path / 'ft'))]


def test_a_failing_method_is_recorded_and_the_rest_still_run(tmp_path,
                                                             fake_run):
  config = _config()
  code = compare.main(config, str(tmp_path), 'zeroshot,ft', seeds=2)
  assert code == 1
  table = json.loads((tmp_path / 'comparison.json').read_text())
  assert table['failed'] == ['zeroshot']
  zs = table['methods']['zeroshot']
  assert zs['error'] == 'seed 43: RuntimeError: out of memory on seed 43'
  assert zs['n_seeds'] == 1  # seed 42 still counts
  assert table['methods']['ft']['n_seeds'] == 2
  assert 'some seeds failed: seed 43' in (tmp_path / 'comparison.md'
                                          ).read_text()


def test_finished_results_with_another_config_are_refused(tmp_path,
                                                          fake_run):
  config = _config()
  assert compare.main(config, str(tmp_path), 'ft', 1) == 0
  changed = _config()
  changed.train.lr = 0.5
  changed.data.test_per_class = 3
  assert compare.main(changed, str(tmp_path), 'ft', 1) == 1
  table = json.loads((tmp_path / 'comparison.json').read_text())
  err = table['methods']['ft']['error']
  assert 'different config (data.test_per_class, train.lr)' in err
  assert len(fake_run) == 1  # nothing was re-run over the stale results
  md = (tmp_path / 'comparison.md').read_text()
  assert '| ft | failed: seed 42: ValueError:' in md


def test_config_diff_ignores_cache_dir_and_list_tuple_spelling():
  config = _config()
  recorded = json.loads(json.dumps(config.to_dict(), default=list))
  recorded['cache_dir'] = '/elsewhere'
  assert compare.config_diff(recorded, config) == []
  recorded['method_kwargs']['alpha'] = 7.0
  assert compare.config_diff(recorded, config) == ['method_kwargs.alpha']


def test_seed_list_and_bad_seeds():
  config = _config()
  assert compare.seed_list(config, 2) == [config.seed, config.seed + 1]
  with pytest.raises(ValueError, match='--seeds'):
    compare.seed_list(config, 0)


def test_retrieval_methods_leave_the_recorded_config_as_given(monkeypatch):
  """primed_uni / gift pick retrieval.mode='uni' on a copy: the config the
  run records (and --compare re-reads) keeps the user's 'dyn', so finished
  runs are not refused as 'made with a different config (retrieval.mode)'."""
  import dataclasses
  from mgtil_jax import retrieval
  from mgtil_jax.methods import parts
  seen = {}
  monkeypatch.setattr(retrieval, 'build_reference_source',
                      lambda exp, batch_size: seen.setdefault('exp', exp))
  config = mgtil_synth.get_config('runlocal')

  @dataclasses.dataclass
  class FakeExp:
    config: object
  exp = FakeExp(config)
  parts.make_reference_source(exp, 'retrieval_uni', 8)
  assert seen['exp'].config.retrieval.mode == 'uni'
  assert exp.config.retrieval.mode == 'dyn'
  assert compare.config_diff(exp.config.to_dict(), config) == []
