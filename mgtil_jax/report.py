"""What a run shows people: progress bars, TensorBoard scalars, the results
JSON, the printed table and the PNG plots. Only process 0 writes."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform

import jax
import numpy as np
from tqdm import tqdm

from mgtil_jax import metrics

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
  if acc.shape[0] == acc.shape[1]:
    summary = metrics.continual_metrics(acc, meta['zero_shot'])
  else:  # joint training: one row, only the final-accuracy metrics apply
    summary = {k: float('nan') for k in ('transfer', 'avg', 'bwt',
                                         'forgetting')}
    summary.update(last=float(acc[-1].mean()),
                   zero_shot_mean=float(np.mean(meta['zero_shot'])))
  # ACC / AUC as the paper's MedXtreme table: the final row's means.
  summary['acc'] = float(acc[-1].mean())
  summary['auc'] = float(np.nanmean(auc[-1])) if np.isfinite(
      auc[-1]).any() else float('nan')
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
      'train_curves': meta['train_curves'],
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
  """Plots, the Markdown table, then results.json, each written to a
  temporary file and renamed: a failure leaves the previous outputs whole,
  and results.json (what tools read) appears only once the rest succeeded."""
  plots = {'accuracy_matrix.png': plot_accuracy_matrix,
           'accuracy_over_time.png': plot_accuracy_over_time}
  done = []  # (tmp, final): renamed together at the end
  try:
    for name, plot in plots.items():
      tmp = os.path.join(workdir, name[:-len('.png')] + '.tmp.png')
      plot(results, tmp)
      if os.path.exists(tmp):
        done.append((tmp, os.path.join(workdir, name)))
    tmp = os.path.join(workdir, 'results.md.tmp')
    with open(tmp, 'w') as f:
      f.write(format_table(results) + '\n')
    done.append((tmp, os.path.join(workdir, 'results.md')))
    tmp = os.path.join(workdir, 'results.json.tmp')
    with open(tmp, 'w') as f:
      json.dump(results, f, indent=1, default=_json_default)
    done.append((tmp, os.path.join(workdir, 'results.json')))
  except BaseException:
    for tmp, _ in done:
      if os.path.exists(tmp):
        os.remove(tmp)
    raise
  for tmp, final in done:  # results.json last
    os.replace(tmp, final)


def _fmt(x, pct=True):
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return '  -  '
  return f'{100 * x:5.1f}' if pct else f'{x:5.2f}'


def format_table(results: dict) -> str:
  """The accuracy matrix (with the zero-shot row) and the summary, as
  Markdown that also reads well in a terminal."""
  names = [t['name'] for t in results['tasks']]
  short = [n[:12] for n in names]
  head = '| after task   | ' + ' | '.join(f'{s:>12}' for s in short) + ' |'
  rule = '|' + '---|' * (len(names) + 1)
  lines = [f"Accuracy (%) of method '{results['method']}' on "
           f"{results['benchmark']}: row = after training task, column = "
           'evaluated task', '', head, rule]
  acc_rows = results['accuracy_matrix']
  rows = [('zero-shot', results['zero_shot'])] + (
      [(f'{i + 1} {names[i][:9]}', r) for i, r in enumerate(acc_rows)]
      if len(acc_rows) == len(names) else [('after joint', acc_rows[-1])])
  for label, row in rows:
    lines.append(f'| {label:<12} | ' + ' | '.join(
        f'{_fmt(v):>12}' for v in row) + ' |')
  chance = ' | '.join(f"{_fmt(t['chance']):>12}" for t in results['tasks'])
  lines.append(f'| {"(chance)":<12} | {chance} |')
  s = results['summary']
  lines += ['', '| Transfer | Avg | Last | BWT | Forgetting | ACC | AUC | '
            'zero-shot |', '|---|---|---|---|---|---|---|---|',
            f"| {_fmt(s['transfer'])} | {_fmt(s['avg'])} | {_fmt(s['last'])} "
            f"| {_fmt(s['bwt'])} | {_fmt(s['forgetting'])} | {_fmt(s['acc'])}"
            f" | {_fmt(s['auc'])} | {_fmt(s.get('zero_shot_mean'))} |"]
  return '\n'.join(lines)


def _figure(width, height):
  """A figure outside pyplot: no global backend switch, nothing to close,
  so plotting from a notebook leaves its inline display alone."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(width, height))
  return fig, fig.add_subplot()


def plot_accuracy_matrix(results: dict, path: str):
  names = [t['name'] for t in results['tasks']]
  mat = np.asarray([results['zero_shot']] + results['accuracy_matrix'],
                   np.float64) * 100
  n, rows = len(names), mat.shape[0]
  fig, ax = _figure(1.0 + 0.75 * n, 1.2 + 0.6 * rows)
  im = ax.imshow(mat, cmap='viridis', vmin=0, vmax=100, aspect='auto')
  for i in range(mat.shape[0]):
    for j in range(n):
      ax.text(j, i, f'{mat[i, j]:.0f}', ha='center', va='center',
              color='white' if mat[i, j] < 60 else 'black', fontsize=8)
  ax.set_xticks(range(n), names, rotation=45, ha='right', fontsize=8)
  labels = (['after {}'.format(i + 1) for i in range(rows - 1)]
            if rows == n + 1 else ['after joint'])
  ax.set_yticks(range(rows), ['zero-shot'] + labels, fontsize=8)
  ax.axhline(0.5, color='white', lw=2)
  ax.set_xlabel('evaluated task')
  s = results['summary']
  ax.set_title(f"{results['method']}: Transfer {_fmt(s['transfer'])}  "
               f"Avg {_fmt(s['avg'])}  Last {_fmt(s['last'])}  "
               f"BWT {_fmt(s['bwt'])}", fontsize=9)
  fig.colorbar(im, ax=ax, label='accuracy (%)')
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def plot_accuracy_over_time(results: dict, path: str):
  """Per-task accuracy after each training stage (0 = zero-shot)."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  names = [t['name'] for t in results['tasks']]
  mat = np.asarray([results['zero_shot']] + results['accuracy_matrix']) * 100
  n = len(names)
  if mat.shape[0] != n + 1:  # joint training: no sequence to plot
    return
  fig, ax = _figure(8, 4.5)
  cmap = colormaps['tab10']
  for j in range(n):
    ax.plot(range(n + 1), mat[:, j], color=cmap(j % 10), lw=1.2, alpha=0.35)
    # Solid from the moment the task is trained.
    ax.plot(range(j + 1, n + 1), mat[j + 1:, j], color=cmap(j % 10), lw=2,
            marker='o', ms=3, label=names[j])
    ax.axhline(100 * results['tasks'][j]['chance'], color=cmap(j % 10),
               lw=0.6, ls=':')
  ax.set_xticks(range(n + 1), ['zs'] + [str(i + 1) for i in range(n)])
  ax.set_xlabel('after training task (zs = zero-shot); faint = not yet '
                'trained, dotted = chance')
  ax.set_ylabel('test accuracy (%)')
  ax.set_ylim(0, 100)
  ax.set_title(f"Per-task accuracy over the sequence ({results['method']})")
  ax.legend(fontsize=7, ncol=3, loc='lower left')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
