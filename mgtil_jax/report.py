"""What a run shows people: progress bars, TensorBoard scalars, the results
JSON, the printed table and the PNG plots. Only process 0 writes."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import re
import zlib

import jax
import numpy as np
from tqdm import tqdm

from mgtil_jax import learned, metrics

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy',
            'mgtil_jax')


def progress(iterable, **kwargs):
  """tqdm on process 0 only."""
  return tqdm(iterable, disable=jax.process_index() != 0, dynamic_ncols=True,
              **kwargs)


def summary_writer(workdir: str):
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  return SummaryWriter(os.path.join(workdir, 'tensorboard'))


def scalars(writer, prefix: str, values: dict, step: int):
  if writer is None:
    return
  for k, v in values.items():
    writer.add_scalar(f'{prefix}/{k}', float(np.asarray(v)), step)


def _versions() -> dict:
  out = {}
  for p in PACKAGES:
    try:
      out[p] = importlib.metadata.version(p)
    except importlib.metadata.PackageNotFoundError:
      out[p] = None
  out['python'] = platform.python_version()
  return out


def _nan_to_none(x):
  if isinstance(x, float) and math.isnan(x):
    return None
  if isinstance(x, dict):
    return {k: _nan_to_none(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_nan_to_none(v) for v in x]
  return x


def build_results(exp, meta: dict, wall_time: float) -> dict:
  acc = np.asarray(meta['acc_rows'], np.float64)
  auc = np.asarray(meta['auc_rows'], np.float64)
  if getattr(exp.method, 'per_task_bound', False):
    # single_task: row t is the model trained on task t alone, so only the
    # diagonal is a result (the per-task bound); no sequence, no forgetting.
    summary = {k: float('nan') for k in ('transfer', 'avg', 'bwt',
                                         'forgetting')}
    summary.update(last=float(np.diag(acc).mean()),
                   zero_shot_mean=float(np.mean(meta['zero_shot'])))
  elif acc.shape[0] == acc.shape[1]:
    summary = metrics.continual_metrics(acc, meta['zero_shot'])
  else:  # joint training: one row, only the final-accuracy metrics apply
    summary = {k: float('nan') for k in ('transfer', 'avg', 'bwt',
                                         'forgetting')}
    summary.update(last=float(acc[-1].mean()),
                   zero_shot_mean=float(np.mean(meta['zero_shot'])))
  # ACC / AUC as the paper's MedXtreme table: the final row's means (the
  # diagonal's for single_task, whose final row is one task's model).
  final_acc, final_auc = acc[-1], auc[-1]
  if getattr(exp.method, 'per_task_bound', False):
    final_acc, final_auc = np.diag(acc), np.diag(auc)
  summary['acc'] = float(final_acc.mean())
  summary['auc'] = float(np.nanmean(final_auc)) if np.isfinite(
      final_auc).any() else float('nan')
  tasks = [{'name': t.name, 'domain': t.domain,
            'class_names': list(t.class_names),
            'num_train': int(len(t.train_labels)),
            'num_test': int(len(t.test_labels)),
            'chance': 1.0 / len(t.class_names)} for t in exp.tasks]
  return _nan_to_none({
      'method': exp.config.method,
      'benchmark': exp.config.data.name,
      'tasks': tasks,
      'accuracy_matrix': acc.tolist(),
      'auc_matrix': auc.tolist(),
      'zero_shot': list(meta['zero_shot']),
      'zero_shot_auc': list(meta['zero_shot_auc']),
      'summary': summary,
      # Per task: 'loss', 'terms' {name: [[step, value]]} and 'grad_share'
      # {group or term: [[step, share of the summed gradient norms]]}.
      'train_curves': meta['train_curves'],
      'reference': meta.get('reference', []),
      # Tasks whose accuracy after their own training stayed near the
      # majority-class rate, or whose predictions collapsed (learned.py).
      'not_learned': meta.get('not_learned', []),
      # single_task only: the diagonal, each task by its own model.
      'per_task_bound': ([float(x) for x in np.diag(acc)]
                         if getattr(exp.method, 'per_task_bound', False)
                         else None),
      'method_info': meta.get('method_info', {}),
      'config': exp.config.to_dict(),
      'versions': _versions(),
      'devices': {'count': jax.device_count(),
                  'processes': jax.process_count(),
                  'platform': jax.devices()[0].platform},
      'wall_time_s': wall_time,
  })


def _json_default(x):
  if isinstance(x, (np.integer, np.floating)):
    return x.item()
  if isinstance(x, (tuple, set)):
    return list(x)
  return str(x)


def write_outputs(workdir: str, results: dict):
  """The figures and report.html first, then the Markdown table, then
  results.json, the last two each written to a temporary file and renamed:
  a failure leaves the previous results whole, and results.json (what tools
  read) appears only once the rest succeeded."""
  write_figures(workdir, results)
  outputs = (('results.md', format_table(results) + '\n'),
             ('results.json', json.dumps(results, indent=1,
                                         default=_json_default)))
  for name, text in outputs:  # results.json last
    tmp = os.path.join(workdir, name + '.tmp')
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, os.path.join(workdir, name))


def _fmt(x, pct=True):
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return '  -  '
  return f'{100 * x:5.1f}' if pct else f'{x:5.2f}'


def format_table(results: dict) -> str:
  """The accuracy matrix (with the zero-shot row) and the summary, as
  Markdown that also reads well in a terminal. Task names are never cut."""
  names = [t['name'] for t in results['tasks']]
  widths = [max(5, len(n)) for n in names]
  acc_rows = results['accuracy_matrix']
  rows = [('zero-shot', results['zero_shot'])] + (
      [(f'{i + 1} {names[i]}', r) for i, r in enumerate(acc_rows)]
      if len(acc_rows) == len(names) else [('after joint', acc_rows[-1])])
  rows.append(('(chance)', [t['chance'] for t in results['tasks']]))
  label_w = max(len('after task'), *(len(label) for label, _ in rows))
  head = (f"| {'after task':<{label_w}} | " +
          ' | '.join(f'{n:>{w}}' for n, w in zip(names, widths)) + ' |')
  rule = '|' + '---|' * (len(names) + 1)
  row_is = ('the model trained on that task alone (the diagonal is the '
            'per-task bound)' if results.get('per_task_bound')
            else 'after training task')
  lines = [f"Accuracy (%) of method '{results['method']}' on "
           f"{results['benchmark']}: row = {row_is}, column = "
           'evaluated task', '', head, rule]
  for label, row in rows:
    lines.append(f'| {label:<{label_w}} | ' + ' | '.join(
        f'{_fmt(v):>{w}}' for v, w in zip(row, widths)) + ' |')
  s = results['summary']
  lines += ['', '| Transfer | Avg | Last | BWT | Forgetting | ACC | AUC | '
            'zero-shot |', '|---|---|---|---|---|---|---|---|',
            f"| {_fmt(s['transfer'])} | {_fmt(s['avg'])} | {_fmt(s['last'])} "
            f"| {_fmt(s['bwt'])} | {_fmt(s['forgetting'])} | {_fmt(s['acc'])}"
            f" | {_fmt(s['auc'])} | {_fmt(s.get('zero_shot_mean'))} |"]
  return '\n'.join(lines)


# Files a run writes, in the order the final summary and the README list them.
OUTPUTS = (
    ('report.html', 'one page with every table and plot (open in a browser)'),
    ('results.json', 'matrices, metrics, loss curves, config, versions'),
    ('results.md', 'the table printed above'),
    ('accuracy_matrix.png', 'heatmap of the accuracy matrix'),
    ('accuracy_over_time.png', 'per-task accuracy after each task'),
    ('loss_terms.png', 'each loss term over the steps of every task'),
    ('tensorboard', 'scalars: tensorboard --logdir <this>'),
)


def final_summary(results: dict, workdir: str) -> str:
  """The block a run ends with: the headline metrics and where the outputs
  are (only the files that exist)."""
  s = results['summary']
  metrics_line = '  '.join(
      f'{label} {_fmt(s.get(key)).strip()}' for key, label in (
          ('transfer', 'Transfer'), ('avg', 'Avg'), ('last', 'Last'),
          ('bwt', 'BWT'), ('forgetting', 'Forgetting'), ('acc', 'ACC'),
          ('auc', 'AUC'), ('zero_shot_mean', 'zero-shot')))
  wall = results.get('wall_time_s')
  head = (f"== {results['method']} on {results['benchmark']} "
          f"({len(results['tasks'])} tasks"
          f"{'' if wall is None else f', {wall:.0f} s'}) ==")
  lines = [head, f'{metrics_line}  (%)']
  lines += learned.summary_lines(results.get('not_learned'))
  lines.append(f'outputs in {workdir}:')
  for name, what in OUTPUTS:
    if os.path.exists(os.path.join(workdir, name)):
      lines.append(f'  {name:<24} {what}')
  return '\n'.join(lines)


def error_interval(row: dict, metric: str):
  """(below, above): the distances from row['summary'][metric] to the ends
  of its spread over seeds, in the metric's units, or (None, None). Reads
  row['ci'][metric] as [low, high] bounds, {'low', 'high'} or a half-width,
  else row['summary_std'][metric] as +- one standard deviation."""
  value = (row.get('summary') or {}).get(metric)
  ci = (row.get('ci') or {}).get(metric)
  std = (row.get('summary_std') or {}).get(metric)
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return None, None
  if isinstance(ci, dict):
    ci = [ci.get('low'), ci.get('high')]
  if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
    return max(0.0, value - float(ci[0])), max(0.0, float(ci[1]) - value)
  if isinstance(ci, (int, float)) and math.isfinite(ci):
    return abs(float(ci)), abs(float(ci))
  if isinstance(std, (int, float)) and math.isfinite(std):
    return abs(float(std)), abs(float(std))
  return None, None


# One colour per method, the same in every plot; the references are neutral
# (zero-shot grey, joint black) and PRIMED red.
METHOD_COLORS = {
    'zeroshot': '#7f7f7f', 'joint': '#000000', 'ft': '#1f77b4',
    'l2': '#aec7e8', 'ewc': '#17becf', 'lwf': '#9467bd', 'icarl': '#8c564b',
    'wiseft': '#bcbd22', 'zscl': '#2ca02c', 'moe_adapters': '#ff7f0e',
    'diki': '#e377c2', 'primed_uni': '#ff9896', 'primed': '#d62728',
    'single_task': '#525252',  # a reference, neutral like joint
}
# One colour per loss term, the same in every panel; the total is black.
TERM_COLORS = {
    'loss': '#000000', 'ce': '#1f77b4', 'ckt': '#d62728', 'cmc': '#ff7f0e',
    'dfg': '#2ca02c', 'reg': '#9467bd', 'l2': '#9467bd', 'ewc': '#9467bd',
    'lwf': '#8c564b', 'kd': '#e377c2', 'distill': '#17becf',
    'replay': '#bcbd22',
}
_SPARE = ('#393b79', '#637939', '#8c6d31', '#843c39', '#7b4173', '#3182bd',
          '#e6550d', '#31a354', '#756bb1', '#636363')


def _color(name: str, table: dict) -> str:
  """A fixed colour for a known name; an unknown one gets a spare colour
  chosen by a stable hash of the name (the same in every process)."""
  if name in table:
    return table[name]
  return _SPARE[zlib.crc32(name.encode()) % len(_SPARE)]


def method_color(method: str) -> str:
  return _color(method, METHOD_COLORS)


def wrap_name(name: str, width: int = 14) -> str:
  """A task name over several lines, broken after '_', '-' or ' ' where
  possible and inside a word only when one part is longer than `width`."""
  parts = re.findall(r'[^_\- ]+[_\- ]?|[_\- ]', name)
  lines, line = [], ''
  for part in parts:
    if line and len(line) + len(part.rstrip()) > width:
      lines.append(line)
      line = ''
    while len(part) > width + 1:
      lines.append(part[:width])
      part = part[width:]
    line += part
  if line:
    lines.append(line)
  return '\n'.join(l.rstrip(' ') for l in lines)


def _figure(width, height, nrows=1, ncols=1, **kwargs):
  """A figure outside pyplot: no global backend switch, nothing to close,
  so plotting from a notebook leaves its inline display alone. The
  constrained layout keeps titles, tick labels and outside legends inside
  the canvas. One Axes for 1 x 1, else an array of them."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(width, height), layout='constrained')
  if nrows == 1 and ncols == 1:
    return fig, fig.add_subplot()
  return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def _save(fig, path):
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig


def _matrix(results):
  nan = lambda v: np.nan if v is None else v
  return np.asarray([[nan(v) for v in row] for row in
                     [results['zero_shot']] + results['accuracy_matrix']],
                    np.float64) * 100


def plot_accuracy_matrix(results: dict, path: str | None = None):
  """Heatmap: row 0 zero-shot, row t after task t; the diagonal (each task
  just learned) outlined. Returns the figure; saves it when `path` is set."""
  from matplotlib.patches import Rectangle  # pylint: disable=g-import-not-at-top
  names = [t['name'] for t in results['tasks']]
  mat = _matrix(results)
  n, rows = len(names), mat.shape[0]
  fig, ax = _figure(max(5.0, 2.2 + 0.8 * n), 2.2 + 0.45 * rows)
  im = ax.imshow(mat, cmap='viridis', vmin=0, vmax=100, aspect='auto')
  for i in range(rows):
    for j in range(n):
      if np.isfinite(mat[i, j]):
        ax.text(j, i, f'{mat[i, j]:.0f}', ha='center', va='center',
                color='white' if mat[i, j] < 60 else 'black', fontsize=8)
  if rows == n + 1:
    for j in range(n):
      ax.add_patch(Rectangle((j - 0.5, j + 0.5), 1, 1, fill=False, ec='red',
                             lw=1.2))
  ax.set_xticks(range(n), [wrap_name(x) for x in names], rotation=45,
                ha='right', rotation_mode='anchor', fontsize=8)
  labels = (['after {}'.format(i + 1) for i in range(rows - 1)]
            if rows == n + 1 else ['after joint'])
  ax.set_yticks(range(rows), ['zero-shot'] + labels, fontsize=8)
  ax.axhline(0.5, color='white', lw=2)
  ax.set_xlabel('evaluated task')
  s = results['summary']
  ax.set_title(f"{results['method']} on {results['benchmark']}\n"
               f"Transfer {_fmt(s['transfer']).strip()}   "
               f"Avg {_fmt(s['avg']).strip()}   "
               f"Last {_fmt(s['last']).strip()}   "
               f"BWT {_fmt(s['bwt']).strip()}", fontsize=9)
  fig.colorbar(im, ax=ax, label='accuracy (%)')
  return _save(fig, path)


def plot_accuracy_over_time(results: dict, path: str | None = None):
  """Per-task accuracy after each training stage (0 = zero-shot); None for
  joint training, which has no sequence."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  names = [t['name'] for t in results['tasks']]
  mat = _matrix(results)
  n = len(names)
  if mat.shape[0] != n + 1:
    return None
  fig, ax = _figure(9, 4.5)
  cmap = colormaps['tab10' if n <= 10 else 'tab20']
  for j in range(n):
    c = cmap(j % cmap.N)
    ax.plot(range(n + 1), mat[:, j], color=c, lw=1.2, alpha=0.35)
    # Solid from the moment the task is trained.
    ax.plot(range(j + 1, n + 1), mat[j + 1:, j], color=c, lw=2,
            marker='o', ms=3, label=wrap_name(names[j], 24))
    ax.axhline(100 * results['tasks'][j]['chance'], color=c, lw=0.6, ls=':')
  ax.plot(range(n + 1), np.nanmean(mat, axis=1), color='black', lw=2.5,
          ls='--', label='mean over tasks')
  ax.set_xticks(range(n + 1), ['zs'] + [str(i + 1) for i in range(n)])
  ax.set_xlabel('after training task (zs = zero-shot)\n'
                'faint = not yet trained, dotted = chance', fontsize=9)
  ax.set_ylabel('test accuracy (%)')
  ax.set_ylim(0, 100)
  ax.set_title(f"Per-task accuracy over the sequence ({results['method']})",
               fontsize=10)
  ax.legend(fontsize=7, loc='center left', bbox_to_anchor=(1.01, 0.5),
            frameon=False)
  return _save(fig, path)


def _curve(points):
  arr = np.asarray(points, np.float64).reshape(-1, 2)
  return arr[:, 0], arr[:, 1]


def plot_loss_terms(results: dict, path: str | None = None):
  """One panel per task: the total loss (black) and, when the run logged
  them (train_curves[i]['terms']), each weighted loss term over the steps
  of that task. None when nothing was trained."""
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  curves = [c for c in results.get('train_curves') or [] if c.get('loss')]
  if not curves:
    return None
  cols = min(3, len(curves))
  rows = -(-len(curves) // cols)
  fig, axes = _figure(3.6 * cols + 1.4, 2.7 * rows + 0.5, rows, cols)
  # One phase (joint training) is a single Axes, not an array.
  axes = np.asarray(axes, dtype=object).reshape(rows, cols)
  seen = {}
  for k, (ax, c) in enumerate(zip(axes.flat, curves)):
    series = {'loss': c['loss']}
    series.update({name: pts for name, pts in (c.get('terms') or {}).items()
                   if pts})
    values = []
    for name, pts in series.items():
      steps, vals = _curve(pts)
      values.append(vals)
      line, = ax.plot(steps, vals, color=_color(name, TERM_COLORS),
                      lw=2.2 if name == 'loss' else 1.3,
                      marker='o' if len(steps) < 20 else None, ms=3,
                      label='total' if name == 'loss' else name)
      seen.setdefault(line.get_label(), line)
    allv = np.concatenate(values)
    allv = allv[np.isfinite(allv)]
    # Terms can differ by orders of magnitude (a regulariser next to CE).
    if len(series) > 1 and allv.size and allv.min() > 0 and (
        allv.max() / allv.min() > 50):
      ax.set_yscale('log')
    ax.set_title(f"{k + 1}. {wrap_name(c.get('task', '?'), 30)}", fontsize=9)
    ax.set_xlabel('step within task', fontsize=8)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
  for ax in axes[:, 0]:
    ax.set_ylabel('loss', fontsize=8)
  for ax in list(axes.flat)[len(curves):]:
    ax.axis('off')
  fig.suptitle(f"Training loss per term ({results['method']})", fontsize=10)
  fig.legend(list(seen.values()), list(seen), loc='outside right center',
             fontsize=8, frameon=False)
  return _save(fig, path)


def plot_methods_over_time(runs: dict, path: str | None = None):
  """Several methods' runs ({method: results}) on one benchmark, each in
  its method's colour: the mean accuracy over all tasks (left) and over the
  tasks learned so far (right) after each task. Joint training, which has
  no sequence, is a dashed line at its final mean. None without runs."""
  runs = {m: r for m, r in runs.items() if r is not None}
  if not runs:
    return None
  fig, axes = _figure(11, 4.2, 1, 2)
  n = max(len(r['tasks']) for r in runs.values())
  for method, r in runs.items():
    mat = _matrix(r)
    color = method_color(method)
    if mat.shape[0] != len(r['tasks']) + 1:  # joint: one row
      for ax in axes[0]:
        ax.axhline(np.nanmean(mat[-1]), color=color, lw=1.5, ls='--',
                   label=f'{method} (final)')
      continue
    seen = [np.nan] + [np.nanmean(mat[t, :t]) for t in range(1, len(mat))]
    for ax, y in zip(axes[0], (np.nanmean(mat, axis=1), seen)):
      ax.plot(range(len(mat)), y, color=color, lw=2, marker='o', ms=3,
              label=method)
  titles = ('Mean accuracy over all tasks',
            'Mean accuracy over the tasks learned so far')
  for ax, title in zip(axes[0], titles):
    ax.set_xticks(range(n + 1), ['zs'] + [str(i + 1) for i in range(n)])
    ax.set_xlabel('after training task (zs = zero-shot)', fontsize=9)
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel('test accuracy (%)')
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='outside right center', fontsize=8,
             frameon=False)
  benchmark = next(iter(runs.values()))['benchmark']
  fig.suptitle(f'Methods over the sequence on {benchmark}', fontsize=11)
  return _save(fig, path)


# The figures of one run: file name -> plot function.
RUN_FIGURES = (('accuracy_matrix.png', plot_accuracy_matrix),
               ('accuracy_over_time.png', plot_accuracy_over_time),
               ('loss_terms.png', plot_loss_terms))


def write_figures(workdir: str, results: dict) -> dict:
  """Every figure of a run as a PNG in `workdir`, and `report.html` with the
  tables and the same figures inline. Returns {file name: Figure}."""
  from mgtil_jax import html_report  # pylint: disable=g-import-not-at-top
  figures = {}
  for name, plot_fn in RUN_FIGURES:
    fig = plot_fn(results, os.path.join(workdir, name))
    if fig is not None:
      figures[name] = fig
  html_report.write_run(workdir, results, figures)
  return figures
