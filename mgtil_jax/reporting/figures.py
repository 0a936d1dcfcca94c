"""The figures of a run and of a comparison (matplotlib, outside pyplot),
with one colour per method and per loss term."""

from __future__ import annotations

import math
import os
import re
import zlib

import numpy as np

from mgtil_jax.reporting.tables import _fmt


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
  """Every figure of a run as a PNG in `workdir`; returns {file name:
  Figure} (outputs.write_run puts the same figures in report.html)."""
  figures = {}
  for name, plot_fn in RUN_FIGURES:
    fig = plot_fn(results, os.path.join(workdir, name))
    if fig is not None:
      figures[name] = fig
  return figures
