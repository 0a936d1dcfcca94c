"""The comparison table of several methods over seeds: mean, spread and
t-interval per method, paired differences against the references with a
bootstrap over seeds x tasks (docs/metrics.md, "Seeds and intervals"), the
Markdown table and the bar plot. It reads results; entry/compare.py runs
them."""

from __future__ import annotations

import numpy as np

from mgtil_jax.core import stats
from mgtil_jax.reporting import figures
from mgtil_jax.reporting.tables import _fmt

METRICS = ('transfer', 'avg', 'last', 'bwt', 'acc', 'auc')
# Paired differences are reported against these methods when present.
REFERENCES = ('ft', 'zscl')
# The paper's HieraMedTransfer order-I numbers (PRIMED paper, Table 1;
# Transfer / Avg / Last in %). A different benchmark (real data, BiomedCLIP,
# 1000 steps per task): shown for the regime, not for a comparison.
PAPER_ORDER_I = {
    'zeroshot': (None, 53.0, 53.0),
    'ft': (None, None, 70.8),
    'zscl': (57.7, 70.5, 77.6),
    'primed': (58.3, 73.1, 82.1),
}


def _mean_or_none(values):
  v = [x for x in values if x is not None]
  return float(np.mean(v)) if v else None


def aggregate(per_seed: dict[int, dict]) -> dict:
  """One table row from {seed: results.json} of one method."""
  summaries = {s: r['summary'] for s, r in per_seed.items()}
  keys = sorted({k for s in summaries.values() for k in s})
  row = {'summary': {}, 'summary_std': {}, 'ci': {}}
  for k in keys:
    d = stats.describe([s.get(k) for s in summaries.values()])
    row['summary'][k] = d['mean']
    row['summary_std'][k] = d['std']
    row['ci'][k] = d['ci']
  if len(per_seed) == 1:  # exactly the run's own numbers
    row['summary'] = dict(next(iter(summaries.values())))
  # The final row; single_task's is its diagonal (each task's own model).
  rows = [r.get('per_task_bound') or r['accuracy_matrix'][-1]
          for r in per_seed.values()]
  row.update(seeds=list(per_seed), n_seeds=len(per_seed),
             per_seed={str(s): v for s, v in summaries.items()},
             wall_time_s=_mean_or_none(r.get('wall_time_s')
                                       for r in per_seed.values()),
             last_row=(rows[0] if len(rows) == 1
                       else np.mean(rows, axis=0).tolist()),
             error=None)
  return row


def paired_diffs(mine: dict[int, dict], ref: dict[int, dict]) -> dict:
  """{metric: paired bootstrap of mine - ref} over the seeds both have."""
  seeds = [s for s in mine if s in ref]
  if not seeds:
    return {}
  a = [stats.per_task(mine[s]['accuracy_matrix']) for s in seeds]
  b = [stats.per_task(ref[s]['accuracy_matrix']) for s in seeds]
  out = {}
  for k in METRICS:
    if k in a[0] and k in b[0]:
      out[k] = stats.paired_bootstrap([x[k] for x in a], [x[k] for x in b])
  return out


def _cell(row, metric):
  mean = row['summary'].get(metric)
  std = row.get('summary_std', {}).get(metric)
  if mean is None:
    return '  -  '
  return _fmt(mean) + ('' if std is None else f' ± {100 * std:.1f}')


def _ci_cell(row, metric):
  ci = row.get('ci', {}).get(metric)
  return '-' if not ci else f'[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]'


def _paper_cell(name):
  return paper_figures(PAPER_ORDER_I.get(name))


def paper_figures(ref) -> str:
  """'57.7 / 70.5 / 77.6' from the paper's (Transfer, Avg, Last); '-' for
  a figure (or a row) it does not give."""
  if not ref:
    return '-'
  return ' / '.join('-' if v is None else f'{v:.1f}' for v in ref)


def format_table(table: dict, references=REFERENCES) -> str:
  """The Markdown table; paired differences against each row named in
  `references` that the rows carry (`row['diff']`)."""
  n = len(table.get('seeds', [None]))
  lines = [f"Comparison on {table['benchmark']} ({len(table['tasks'])} "
           f'tasks, {n} seed{"s" if n > 1 else ""}: '
           f"{', '.join(str(s) for s in table.get('seeds', []))}); accuracy "
           'in %, mean ± std over seeds; joint = multi-task upper bound '
           '(Last only); single_task = per-task bound (Last and ACC = mean '
           'of the diagonal: each task by the model trained on it alone)',
           '',
           '| method | Transfer | Avg | Last | BWT | ACC | AUC | Last 95% CI '
           '| time (s) | paper T / A / L ‡ |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for name, row in table['methods'].items():
    if row.get('error') and not row['n_seeds']:
      lines.append(f"| {name} | failed: {row['error']} |" + ' |' * 8)
      continue
    cells = ' | '.join(_cell(row, k) for k in METRICS)
    wall = row.get('wall_time_s')
    lines.append(f"| {name} | {cells} | {_ci_cell(row, 'last')} | "
                 f"{'-' if wall is None else f'{wall:.0f}'} | "
                 f'{_paper_cell(name)} |')
  failed = [(n, r['error']) for n, r in table['methods'].items()
            if r.get('error') and r['n_seeds']]
  for name, err in failed:
    lines.append(f'\n{name}: some seeds failed: {err}')
  lines += ['', '‡ The PRIMED paper, Table 1, HieraMedTransfer order I '
            '(Transfer / Avg / Last): a different benchmark (real images, '
            'BiomedCLIP, 1000 steps per task), shown for the regime only; '
            'it is not comparable to the columns on the left.']
  diffs = _format_diffs(table, references)
  if diffs:
    lines += ['', diffs]
  return '\n'.join(lines)


def _format_diffs(table: dict, references) -> str:
  lines = []
  for ref in references:
    rows = [(n, r['diff'][ref]) for n, r in table['methods'].items()
            if ref in r.get('diff', {}) and r['diff'][ref]]
    if not rows:
      continue
    lines += [f'Paired difference vs {ref} (points; mean [95% bootstrap CI, '
              'seeds and tasks resampled: docs/metrics.md]; no interval '
              f'from fewer than {stats.MIN_SEEDS} seeds)', '',
              '| method | Transfer | Avg | Last | BWT | seeds x tasks |',
              '|---|---|---|---|---|---|']
    for name, d in rows:
      cells = []
      for k in ('transfer', 'avg', 'last', 'bwt'):
        x = d.get(k)
        if not x or x['mean'] is None:
          cells.append('-')
        elif x['ci'] is None:
          cells.append(f"{100 * x['mean']:+.1f}")
        else:
          cells.append(f"{100 * x['mean']:+.1f} "
                       f"[{100 * x['ci'][0]:+.1f}, {100 * x['ci'][1]:+.1f}]")
      last = d.get('last') or {}
      cells.append(f"{last.get('n_seeds', '-')} x {last.get('n_tasks', '-')}")
      lines.append(f"| {name} | {' | '.join(cells)} |")
    lines.append('')
  return '\n'.join(lines).rstrip()


def plot(table: dict, path: str | None = None):
  """One panel per metric (Transfer, Avg, Last, BWT), one bar per method in
  the method's own colour (figures.method_color), with error bars when the
  rows carry a spread over seeds (figures.error_interval). Returns the
  figure; saves it when `path` is set."""
  names = list(table['methods'])
  shown = (('transfer', 'Transfer'), ('avg', 'Avg'), ('last', 'Last'),
           ('bwt', 'BWT'))
  n = len(names)
  ncols = 4 if n <= 5 else 2
  nrows = len(shown) // ncols
  panel_w = max(2.4, 0.9 + 0.38 * n)
  fig, axes = figures._figure(panel_w * ncols, 3.0 * nrows + 0.6, nrows,  # pylint: disable=protected-access
                             ncols)
  colors = [figures.method_color(m) for m in names]
  spread = False
  for ax, (metric, label) in zip(axes.flat, shown):
    rows = [table['methods'][m] for m in names]
    vals = [r['summary'].get(metric) for r in rows]
    vals = np.asarray([np.nan if v is None else 100 * v for v in vals])
    err = np.zeros((2, n))
    for i, r in enumerate(rows):
      below, above = figures.error_interval(r, metric)
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
