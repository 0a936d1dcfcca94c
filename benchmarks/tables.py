"""Rebuilds every results table of benchmarks/RESULTS.md from the committed
runs under benchmarks/results/ (issue 23.6).

  python benchmarks/tables.py           # rewrite the tables in RESULTS.md
  python benchmarks/tables.py --check   # exit 1 if RESULTS.md differs

Layout: benchmarks/results/<table>/table.json says the table's title, the
command that made its runs and the commit they ran at; each row is a folder
<table>/<row>/ holding one seed_<s>.json.gz per seed: a run's results.json,
gzipped, with its train curves dropped (they stay in the run's workdir).
table.json may give `paper`, {row: [Transfer, Avg, Last]} of the paper's
own figures for that row (null where it gives none), and `paper_source`,
where they are quoted from: the table then ends with a column of them,
side by side with the runs.
table.json may list `diffs`, pairs [A, B] of rows: their paired differences
A − B (two-way bootstrap over seeds and tasks; for Last also the paired
t-interval over seeds alone, the tasks held fixed) and the smallest Last
difference the seeds can detect (stats.detectable_difference) are printed
under the table.
A table sits in RESULTS.md between `<!-- table:<table> -->` and
`<!-- /table:<table> -->`; everything else there is prose.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mgtil_jax.core import stats  # pylint: disable=wrong-import-position
from mgtil_jax.reporting import comparison  # pylint: disable=wrong-import-position

RESULTS_DIR = os.path.join(ROOT, 'benchmarks', 'results')
RESULTS_MD = os.path.join(ROOT, 'benchmarks', 'RESULTS.md')
METRICS = (('transfer', 'Transfer'), ('avg', 'Avg'), ('last', 'Last'),
           ('bwt', 'BWT'), ('zero_shot_mean', 'zero-shot'))


def save_run(results: dict, table: str, row: str) -> str:
  """Stores a finished run's results.json as <table>/<row>/seed_<s>.json.gz
  (without its train curves); returns the path."""
  slim = {k: v for k, v in results.items() if k != 'train_curves'}
  folder = os.path.join(RESULTS_DIR, table, row)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f"seed_{results['config']['seed']}.json.gz")
  text = json.dumps(slim, indent=0, sort_keys=True).encode('utf-8')
  # mtime=0: the same run saved again gives the same bytes (a clean diff).
  with open(path, 'wb') as raw, gzip.GzipFile(fileobj=raw, mode='wb',
                                              mtime=0) as f:
    f.write(text)
  return path


def load_table(table: str) -> tuple[dict, dict]:
  """(table.json, {row: {seed: results}}), rows in table.json's order."""
  folder = os.path.join(RESULTS_DIR, table)
  with open(os.path.join(folder, 'table.json')) as f:
    meta = json.load(f)
  rows = {}
  for row in meta['rows']:
    runs = {}
    for name in sorted(os.listdir(os.path.join(folder, row))):
      m = re.fullmatch(r'seed_(\d+)\.json\.gz', name)
      if m:
        with gzip.open(os.path.join(folder, row, name), 'rt') as f:
          runs[int(m.group(1))] = json.load(f)
    rows[row] = runs
  return meta, rows


def _cell(row: dict, key: str) -> str:
  mean = row['summary'].get(key)
  if mean is None:
    return '-'
  std = row['summary_std'].get(key)
  ci = row['ci'].get(key)
  text = f'{100 * mean:.1f}'
  if std is not None:
    text += f' ± {100 * std:.1f}'
  if ci is not None:
    text += f' [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]'
  return text


def render(table: str) -> str:
  """The Markdown of one table: command and commit, then one line per row
  (mean ± std over seeds, and the 95 % t-interval from 3 seeds up)."""
  meta, rows = load_table(table)
  paper = meta.get('paper')
  lines = [f"**{meta['title']}**", '',
           f"Command: `{meta['command']}`; commit `{meta['commit']}`. "
           'Accuracy in %, mean ± std over seeds [95 % t-interval of the '
           f'mean, from {stats.MIN_SEEDS} seeds up].' +
           (f" Paper: {meta['paper_source']}." if paper else ''), '',
           '| row | seeds | ' + ' | '.join(l for _, l in METRICS) +
           ' | time (s) |' +
           (' paper Transfer / Avg / Last |' if paper else ''),
           '|---|---|' + '---|' * len(METRICS) + '---|' +
           ('---|' if paper else '')]
  for name, runs in rows.items():
    agg = comparison.aggregate(runs)
    zs = stats.describe([r['summary'].get('zero_shot_mean')
                         for r in runs.values()])
    agg['summary']['zero_shot_mean'] = zs['mean']
    agg['summary_std']['zero_shot_mean'] = zs['std']
    agg['ci']['zero_shot_mean'] = zs['ci']
    wall = agg.get('wall_time_s')
    lines.append(f"| {name} | {len(runs)} | " +
                 ' | '.join(_cell(agg, k) for k, _ in METRICS) +
                 f" | {'-' if wall is None else f'{wall:.0f}'} |" +
                 (f' {comparison.paper_figures(paper.get(name))} |'
                  if paper else ''))
  for a, b in meta.get('diffs', []):
    if a == b or a not in rows or b not in rows:
      raise SystemExit(f'{table}/table.json: diffs: {a!r} - {b!r} needs two '
                       f'rows of {list(rows)}')
  if meta.get('diffs'):
    lines += ['', 'Paired differences (points; mean [95 % bootstrap CI over '
              'seeds and tasks, from 3 seeds up]; "Last, seeds only" is the '
              'paired t-interval of the per-seed Last differences, the tasks '
              'held fixed; the last column is the smallest true Last '
              'difference these seeds detect with 80 % power: '
              'docs/metrics.md, "Seeds and intervals"):', '',
              '| A − B | Transfer | Avg | Last | BWT | Last, seeds only | '
              'seeds × tasks | Last detectable |',
              '|---|---|---|---|---|---|---|---|']
    lines += [_diff_line(rows, a, b) for a, b in meta['diffs']]
  return '\n'.join(lines)


def _diff_line(rows: dict, a: str, b: str) -> str:
  d = comparison.paired_diffs(rows[a], rows[b])
  cells = []
  for key, _ in METRICS[:4]:
    x = d.get(key)
    if not x or x['mean'] is None:
      cells.append('-')
    elif x['ci'] is None:
      cells.append(f"{100 * x['mean']:+.1f}")
    else:
      cells.append(f"{100 * x['mean']:+.1f} [{100 * x['ci'][0]:+.1f}, "
                   f"{100 * x['ci'][1]:+.1f}]")
  last = d.get('last') or {}
  seeds = [s for s in rows[a] if s in rows[b]]
  seed_diffs = [rows[a][s]['summary']['last'] - rows[b][s]['summary']['last']
                for s in seeds]
  detectable = stats.detectable_difference(seed_diffs)
  t = stats.describe(seed_diffs)
  if t['ci'] is None:
    cells.append('-')
  else:
    cells.append(f"{100 * t['mean']:+.1f} [{100 * t['ci'][0]:+.1f}, "
                 f"{100 * t['ci'][1]:+.1f}]")
  return (f"| {a} − {b} | {' | '.join(cells)} | "
          f"{last.get('n_seeds', '-')} × {last.get('n_tasks', '-')} | "
          f"{'-' if detectable is None else f'{100 * detectable:.1f}'} |")


def tables() -> list[str]:
  if not os.path.isdir(RESULTS_DIR):
    return []
  return sorted(d for d in os.listdir(RESULTS_DIR)
                if os.path.isfile(os.path.join(RESULTS_DIR, d, 'table.json')))


def rebuilt(text: str) -> str:
  """RESULTS.md's text with every table block replaced by its rebuild."""
  for table in tables():
    pattern = re.compile(rf'(<!-- table:{re.escape(table)} -->\n)(?:.*?\n)?'
                         rf'(<!-- /table:{re.escape(table)} -->)', re.S)
    if not pattern.search(text):
      raise SystemExit(f'{RESULTS_MD}: no <!-- table:{table} --> block')
    text = pattern.sub(
        lambda m: m.group(1) + render(table) + '\n' + m.group(2), text)
  return text


def main(argv) -> int:
  with open(RESULTS_MD, encoding='utf-8') as f:
    text = f.read()
  new = rebuilt(text)
  if '--check' in argv:
    if new != text:
      print(f'{RESULTS_MD}: tables differ from benchmarks/results/; run '
            'python benchmarks/tables.py')
      return 1
    return 0
  with open(RESULTS_MD, 'w', encoding='utf-8') as f:
    f.write(new)
  print(f'rebuilt {len(tables())} tables in {RESULTS_MD}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
