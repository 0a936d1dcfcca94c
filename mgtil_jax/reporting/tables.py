"""The text a run prints and writes: the accuracy matrix with the summary
(results.md) and the closing block that lists the outputs."""

from __future__ import annotations

import math
import os

from mgtil_jax.criteria import learned


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
