"""The tables of benchmarks/RESULTS.md are what benchmarks/tables.py
rebuilds from the committed runs under benchmarks/results/ (issue 23.6):
a table edited by hand, or a run added without rebuilding, fails here."""

import gzip
import json
import os
import sys

import numpy as np
from scipy import stats as sp_stats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'benchmarks'))
import tables  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_results_md_tables_match_the_committed_runs():
  with open(tables.RESULTS_MD, encoding='utf-8') as f:
    text = f.read()
  assert tables.tables(), 'no committed results under benchmarks/results/'
  assert tables.rebuilt(text) == text, (
      'RESULTS.md tables differ from benchmarks/results/: run '
      'python benchmarks/tables.py')


def test_a_rebuilt_row_is_the_mean_of_its_runs():
  # Reference: NumPy over the stored matrices' last rows, per table row.
  for table in tables.tables():
    _, rows = tables.load_table(table)
    text = tables.render(table)
    for name, runs in rows.items():
      # single_task's Last is each task right after its own training (the
      # per-task bound, docs/methods.md): the diagonal, not the last row.
      lasts = [np.mean(np.diag(r['accuracy_matrix'])
                       if r['method'] == 'single_task'
                       else r['accuracy_matrix'][-1]) for r in runs.values()]
      assert f'| {name} | {len(runs)} |' in text
      line = next(l for l in text.splitlines()
                  if l.startswith(f'| {name} |'))
      assert f'{100 * np.mean(lasts):.1f}' in line.split('|')[5]


def test_save_run_round_trip(tmp_path, monkeypatch):
  monkeypatch.setattr(tables, 'RESULTS_DIR', str(tmp_path))
  res = {'config': {'seed': 7}, 'summary': {'last': 0.5},
         'accuracy_matrix': [[0.5]], 'train_curves': [{'loss': [1, 2]}]}
  path = tables.save_run(res, 't', 'ft')
  with gzip.open(path, 'rt') as f:
    back = json.load(f)
  assert os.path.basename(path) == 'seed_7.json.gz'
  assert 'train_curves' not in back and back['summary'] == res['summary']


def test_paired_difference_line(tmp_path, monkeypatch):
  # Reference: NumPy mean of the per-seed Last differences (Last = mean of
  # the final accuracy row), and the seeds x tasks it rests on.
  monkeypatch.setattr(tables, 'RESULTS_DIR', str(tmp_path))
  rng = np.random.default_rng(0)
  lasts = {}
  for row in ('a', 'b'):
    for seed in (1, 2, 3, 4):
      m = np.tril(rng.uniform(0.3, 0.9, (3, 3))).tolist()
      lasts[row, seed] = float(np.mean(m[-1]))
      tables.save_run({'config': {'seed': seed}, 'accuracy_matrix': m,
                       'summary': {'last': lasts[row, seed]}}, 't', row)
  with open(tmp_path / 't' / 'table.json', 'w') as f:
    json.dump({'title': 'T', 'command': 'c', 'commit': 'x',
               'rows': ['a', 'b'], 'diffs': [['a', 'b']]}, f)
  line = next(l for l in tables.render('t').splitlines()
              if l.startswith('| a − b |'))
  want = np.mean([lasts['a', s] - lasts['b', s] for s in (1, 2, 3, 4)])
  cells = [c.strip() for c in line.split('|')]
  assert cells[4].startswith(f'{100 * want:+.1f} [')
  # The seeds-only paired t-interval, against scipy's one-sample t-test of
  # the per-seed differences.
  diffs = [lasts['a', s] - lasts['b', s] for s in (1, 2, 3, 4)]
  ci = sp_stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
  assert cells[6] == (f'{100 * want:+.1f} [{100 * ci.low:+.1f}, '
                      f'{100 * ci.high:+.1f}]')
  assert cells[7] == '4 × 3'
  assert float(cells[8]) > 0


def test_paper_column_prints_the_table_json_figures(tmp_path, monkeypatch):
  # Reference: the figures written into table.json by hand here, printed
  # beside the measured row (a row without figures gets '-').
  monkeypatch.setattr(tables, 'RESULTS_DIR', str(tmp_path))
  for row in ('a', 'b'):
    tables.save_run({'config': {'seed': 1}, 'accuracy_matrix': [[0.5]],
                     'summary': {'last': 0.5}}, 't', row)
  with open(tmp_path / 't' / 'table.json', 'w') as f:
    json.dump({'title': 'T', 'command': 'c', 'commit': 'x',
               'rows': ['a', 'b'], 'paper': {'a': [57.2, 72.9, 81.8]},
               'paper_source': 'Table 4'}, f)
  text = tables.render('t')
  assert 'Paper: Table 4.' in text
  line_a = next(l for l in text.splitlines() if l.startswith('| a |'))
  line_b = next(l for l in text.splitlines() if l.startswith('| b |'))
  assert line_a.rstrip(' |').endswith('57.2 / 72.9 / 81.8')
  assert line_b.rstrip(' |').endswith('-')
  assert line_a.count('|') == text.splitlines()[4].count('|')
