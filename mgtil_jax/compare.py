"""Runs several methods on one benchmark and tabulates them side by side.

  python launch.py --config configs/mgtil_synth.py --workdir runs/compare \
      --compare=all

Each method runs (or resumes) in `workdir/<method>` with the same config,
data, seed and budget except `config.method`; a finished method is not run
again. The table (Markdown + JSON + PNG) is rewritten after every method, so
an interrupted comparison still shows what is done.
"""

from __future__ import annotations

import json
import os

import numpy as np

from mgtil_jax import methods, report

METRICS = ('transfer', 'avg', 'last', 'bwt', 'acc', 'auc')


def parse_methods(spec: str) -> tuple[str, ...]:
  names = methods.COMPARISON if spec == 'all' else tuple(
      n.strip() for n in spec.split(',') if n.strip())
  unknown = [n for n in names if n not in methods.METHODS]
  if unknown or not names:
    raise ValueError(f'--compare: unknown methods {unknown}; expected all or '
                     f'a comma-separated list from {sorted(methods.METHODS)}')
  return names


def _load(path: str):
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return None


def compare(config, workdir: str, names) -> dict:
  from mgtil_jax import train  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir, exist_ok=True)
  rows = {}
  for name in names:
    out = os.path.join(workdir, name)
    results = _load(os.path.join(out, 'results.json'))
    if results is None:
      cfg = config.copy_and_resolve_references()
      cfg.method = name
      cfg.cache_dir = cfg.cache_dir or os.path.join(os.path.abspath(workdir),
                                                    'cache')
      print(f'\n=== {name} ===')
      results = train.run(cfg, out)
    rows[name] = {'summary': results['summary'],
                  'wall_time_s': results.get('wall_time_s'),
                  'last_row': results['accuracy_matrix'][-1]}
    table = {'benchmark': config.data.name,
             'tasks': [t['name'] for t in results['tasks']],
             'methods': rows}
    write(workdir, table)
  print('\n' + format_table(table))
  return table


def format_table(table: dict) -> str:
  head = ('| method | Transfer | Avg | Last | BWT | ACC | AUC | time (s) |\n'
          '|---|---|---|---|---|---|---|---|')
  lines = [f"Comparison on {table['benchmark']} "
           f"({len(table['tasks'])} tasks); accuracy in %, joint = "
           'multi-task upper bound (Last only)', '', head]
  for name, row in table['methods'].items():
    s = row['summary']
    cells = ' | '.join(report._fmt(s.get(k)) for k in METRICS)  # pylint: disable=protected-access
    wall = row.get('wall_time_s')
    lines.append(f'| {name} | {cells} | '
                 f"{'-' if wall is None else f'{wall:.0f}'} |")
  return '\n'.join(lines)


def plot(table: dict, path: str | None = None):
  """One panel per metric (Transfer, Avg, Last, BWT), one bar per method in
  the method's own colour (report.method_color), with error bars when the
  rows carry a spread over seeds (report.error_interval). Returns the
  figure; saves it when `path` is set."""
  names = list(table['methods'])
  shown = (('transfer', 'Transfer'), ('avg', 'Avg'), ('last', 'Last'),
           ('bwt', 'BWT'))
  n = len(names)
  ncols = 4 if n <= 5 else 2
  nrows = len(shown) // ncols
  panel_w = max(2.4, 0.9 + 0.38 * n)
  fig, axes = report._figure(panel_w * ncols, 3.0 * nrows + 0.6, nrows,  # pylint: disable=protected-access
                             ncols)
  colors = [report.method_color(m) for m in names]
  spread = False
  for ax, (metric, label) in zip(axes.flat, shown):
    rows = [table['methods'][m] for m in names]
    vals = [r['summary'].get(metric) for r in rows]
    vals = np.asarray([np.nan if v is None else 100 * v for v in vals])
    err = np.zeros((2, n))
    for i, r in enumerate(rows):
      below, above = report.error_interval(r, metric)
      if below is not None:
        err[:, i] = 100 * below, 100 * above
        spread = True
    ax.bar(np.arange(n), np.nan_to_num(vals), 0.75, color=colors,
           yerr=err if err.any() else None, capsize=3,
           error_kw={'lw': 1, 'ecolor': '#333333'})
    for i, v in enumerate(vals):
      if np.isnan(v):  # undefined (e.g. joint's Transfer): say so
        ax.text(i, 0.5, 'n/a', ha='center', va='center', fontsize=7,
                color='#666666', transform=ax.get_xaxis_transform())
    ax.axhline(0, color='black', lw=0.6)
    ax.set_xticks(range(n), names, rotation=45, ha='right',
                  rotation_mode='anchor', fontsize=8)
    ax.set_title(label, fontsize=10)
    ax.tick_params(axis='y', labelsize=8)
    ax.grid(axis='y', alpha=0.3)
  for ax in axes[:, 0]:
    ax.set_ylabel('%')
  note = ('; bars: spread over seeds' if spread else '')
  fig.suptitle(f"Methods on {table['benchmark']} "
               f"({len(table['tasks'])} tasks{note})", fontsize=11)
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig


def write(workdir: str, table: dict):
  path = os.path.join(workdir, 'comparison.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(table, f, indent=1)
  os.replace(path + '.tmp', path)
  with open(os.path.join(workdir, 'comparison.md'), 'w') as f:
    f.write(format_table(table) + '\n')
  from mgtil_jax import html_report  # pylint: disable=g-import-not-at-top
  html_report.write_comparison(
      workdir, table, plot(table, os.path.join(workdir, 'comparison.png')))
