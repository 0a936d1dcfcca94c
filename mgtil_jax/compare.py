"""Runs several methods (and seeds) on one benchmark and tabulates them.

  python launch.py --config configs/mgtil_synth.py --workdir runs/compare \
      --compare=all --seeds=3

Each method runs (or resumes) in `workdir/<method>` (one seed) or
`workdir/seed_<seed>/<method>` (several: seeds config.seed, config.seed + 1,
...) with the same config, data and budget except `config.method` and
`config.seed`. A finished run is reused only if the config it recorded in its
results.json equals the new one; otherwise the method is refused with the
differing fields named. A method that fails is recorded with its error line
and the comparison goes on; `main` returns 1 at the end if any failed. The
table (Markdown + JSON + PNG) is rewritten after every run, so an
interrupted comparison still shows what is done.

Rows of comparison.json (`table['methods'][name]`):
  summary       {metric: mean over seeds}  (fractions, as results.json)
  summary_std   {metric: sample std over seeds, or None with one seed}
  ci            {metric: [lo, hi] 95% t-interval of the mean, or None}
  per_seed      {seed: summary}
  diff          {'ft' | 'zscl': {metric: {'mean', 'ci': [lo, hi], ...}}}:
                this method minus the reference, paired by seed and task,
                with a bootstrap interval over seeds x tasks (stats.py)
  seeds, n_seeds, wall_time_s (mean), last_row (mean final row),
  error         None, or the error line of a failed / refused run
"""

from __future__ import annotations

import json
import os
import traceback

import numpy as np

from mgtil_jax import hosts, methods, report, stats

METRICS = ('transfer', 'avg', 'last', 'bwt', 'acc', 'auc')
# Paired differences are reported against these methods when present.
REFERENCES = ('ft', 'zscl')
# Config fields that may differ between a finished run and a new one.
UNCHECKED_FIELDS = ('cache_dir', 'seeds')

# The paper's HieraMedTransfer order-I numbers (PRIMED paper, Table 1;
# Transfer / Avg / Last in %). A different benchmark (real data, BiomedCLIP,
# 1000 steps per task): shown for the regime, not for a comparison.
PAPER_ORDER_I = {
    'zeroshot': (None, 53.0, 53.0),
    'ft': (None, None, 70.8),
    'zscl': (57.7, 70.5, 77.6),
    'primed': (58.3, 73.1, 82.1),
}


def parse_methods(spec: str) -> tuple[str, ...]:
  names = methods.COMPARISON if spec == 'all' else tuple(
      n.strip() for n in spec.split(',') if n.strip())
  unknown = [n for n in names if n not in methods.METHODS]
  if unknown or not names:
    raise ValueError(f'--compare: unknown methods {unknown}; expected all or '
                     f'a comma-separated list from {sorted(methods.METHODS)}')
  return names


def seed_list(config, seeds: int | None = None) -> list[int]:
  """config.seed, config.seed + 1, ... (`seeds` or config.seeds of them)."""
  n = config.get('seeds', 1) if seeds is None else seeds
  if not isinstance(n, int) or n < 1:
    raise ValueError(f'--seeds / config.seeds: expected an integer >= 1, '
                     f'got {n!r}')
  return [int(config.seed) + i for i in range(n)]


def _load(path: str):
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return None


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def config_diff(recorded: dict, config) -> list[str]:
  """Fields whose value in `config` differs from the config a finished run
  recorded (JSON round trip, so tuples and lists compare equal); fields only
  the recorded config has are ignored, UNCHECKED_FIELDS too."""
  new = _flatten(json.loads(json.dumps(config.to_dict(), default=str)))
  old = _flatten(json.loads(json.dumps(recorded, default=str)))
  return sorted(k for k in new if k.split('.')[0] not in UNCHECKED_FIELDS
                and (k not in old or old[k] != new[k]))


def _finished(config, out: str) -> dict:
  """{'reuse': bool, 'error': str | None} for a finished run in `out`."""
  results = _load(os.path.join(out, 'results.json'))
  if results is None:
    return {'reuse': False, 'error': None}
  diff = config_diff(results.get('config', {}), config)
  if diff:
    shown = ', '.join(diff[:6]) + (' ...' if len(diff) > 6 else '')
    return {'reuse': False,
            'error': f'{out}/results.json was made with a different config '
                     f'({shown}); delete {out} or use another --workdir'}
  return {'reuse': True, 'error': None}


def _run_one(config, out: str) -> dict:
  """results.json of a finished run with the same config, else a fresh run;
  raises ValueError naming the fields when a finished run's config differs.
  Process 0 decides for every process (hosts.py): a process that reused a
  run while another trained it would wait in the other's collectives."""
  from mgtil_jax import train  # pylint: disable=g-import-not-at-top
  found = hosts.lead_value('compare_finished', _finished(config, out)
                           if hosts.is_lead() else None)
  if found['error']:
    raise ValueError(found['error'])
  if found['reuse']:
    return _load(os.path.join(out, 'results.json'))
  return train.run(config, out)


def _error_line(e: BaseException) -> str:
  lines = [l for l in traceback.format_exception_only(type(e), e)
           if l.strip()]
  return lines[-1].strip().splitlines()[0] if lines else type(e).__name__


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


def compare(config, workdir: str, names, seeds: int | None = None) -> dict:
  os.makedirs(workdir, exist_ok=True)
  seed_values = seed_list(config, seeds)
  cache = config.cache_dir or os.path.join(os.path.abspath(workdir), 'cache')
  results = {name: {} for name in names}
  errors = {}
  table = {'benchmark': config.data.name, 'tasks': [],
           'seeds': seed_values, 'methods': {}, 'failed': []}
  for seed in seed_values:
    base = (workdir if len(seed_values) == 1
            else os.path.join(workdir, f'seed_{seed}'))
    os.makedirs(base, exist_ok=True)
    for name in names:
      cfg = config.copy_and_resolve_references()
      cfg.method = name
      cfg.seed = seed
      cfg.cache_dir = cache
      out = os.path.join(base, name)
      print(f'\n=== {name} (seed {seed}) ===')
      try:
        res = _run_one(cfg, out)
      except hosts.OutOfStepError:
        raise  # the processes parted: nothing later can run in step
      except Exception as e:  # pylint: disable=broad-except
        errors.setdefault(name, []).append(f'seed {seed}: {_error_line(e)}')
        if name not in table['failed']:
          table['failed'].append(name)
        traceback.print_exc()
        print(f'{name} (seed {seed}) failed: {errors[name][-1]}')
        _tabulate(table, results, errors, names)
        write(workdir, table)
        # A method that failed on one process only leaves the others
        # inside it: meet here, or fail with the barrier's name.
        hosts.sync(f'compare:{name}:{seed}')
        continue
      results[name][seed] = res
      table['tasks'] = [t['name'] for t in res['tasks']]
      _tabulate(table, results, errors, names)
      write(workdir, table)
      hosts.sync(f'compare:{name}:{seed}')
  _tabulate(table, results, errors, names)
  write(workdir, table)
  if hosts.is_lead():  # only process 0 prints results (README)
    print('\n' + format_table(table))
  return table


def _tabulate(table, results, errors, names):
  rows = {}
  for name in names:
    if results[name]:
      rows[name] = aggregate(results[name])
    else:
      rows[name] = {'summary': {}, 'summary_std': {}, 'ci': {}, 'seeds': [],
                    'n_seeds': 0, 'per_seed': {}, 'wall_time_s': None,
                    'last_row': None}
    rows[name]['error'] = '; '.join(errors[name]) if name in errors else None
    rows[name]['diff'] = {
        ref: paired_diffs(results[name], results[ref])
        for ref in REFERENCES if ref != name and ref in results
        and results[ref] and results[name]}
  table['methods'] = rows


def main(config, workdir: str, spec: str | None, seeds: int | None) -> int:
  """`launch.py --compare / --seeds`: 1 if any run failed, else 0."""
  names = parse_methods(spec) if spec else (config.method,)
  table = compare(config, workdir, names, seeds)
  return 1 if table['failed'] else 0


def _cell(row, metric):
  mean = row['summary'].get(metric)
  std = row.get('summary_std', {}).get(metric)
  if mean is None:
    return '  -  '
  return report._fmt(mean) + ('' if std is None else f' ± {100 * std:.1f}')  # pylint: disable=protected-access


def _ci_cell(row, metric):
  ci = row.get('ci', {}).get(metric)
  return '-' if not ci else f'[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]'


def _paper_cell(name):
  ref = PAPER_ORDER_I.get(name)
  if ref is None:
    return '-'
  return ' / '.join('-' if v is None else f'{v:.1f}' for v in ref)


def format_table(table: dict) -> str:
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
  diffs = _format_diffs(table)
  if diffs:
    lines += ['', diffs]
  return '\n'.join(lines)


def _format_diffs(table: dict) -> str:
  lines = []
  for ref in REFERENCES:
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
  """comparison.{json,md,png,html}, written by process 0 only (two
  processes renaming one temporary file raced: one of them failed, and the
  other then waited for it in the next method's first barrier)."""
  if not hosts.is_lead():
    return
  path = os.path.join(workdir, 'comparison.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(table, f, indent=1)
  os.replace(path + '.tmp', path)
  with open(os.path.join(workdir, 'comparison.md'), 'w') as f:
    f.write(format_table(table) + '\n')
  from mgtil_jax import html_report  # pylint: disable=g-import-not-at-top
  html_report.write_comparison(
      workdir, table, plot(table, os.path.join(workdir, 'comparison.png')))
