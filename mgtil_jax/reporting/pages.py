"""report.html: one self-contained page per run and per comparison.

Tables are plain HTML and plots are PNGs embedded inline (base64 data
URIs), so the page opens in any browser from a copied folder, without a
server or the PNG files beside it.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import os

from mgtil_jax.reporting import comparison
from mgtil_jax.reporting import figures as figures_lib

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em;
          margin-right: 0.4em; vertical-align: middle; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto;
      font-size: 0.8em; }
"""

_METRICS = (('transfer', 'Transfer'), ('avg', 'Avg'), ('last', 'Last'),
            ('bwt', 'BWT'), ('forgetting', 'Forgetting'), ('acc', 'ACC'),
            ('auc', 'AUC'), ('zero_shot_mean', 'zero-shot'))


def _pct(x) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return '–'
  return f'{100 * x:.1f}'


def _png(fig) -> str:
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=100)
  return base64.b64encode(buf.getvalue()).decode('ascii')


def _img(fig, alt: str) -> str:
  return (f'<img alt="{html.escape(alt)}" '
          f'src="data:image/png;base64,{_png(fig)}">')


def _table(header, rows, numeric_from: int = 1) -> str:
  """header: cell strings; rows: lists of cell strings (escaped here);
  columns from `numeric_from` on are right-aligned."""
  head = ''.join(f'<th>{html.escape(str(h))}</th>' for h in header)
  body = ''.join(
      '<tr>' + ''.join(
          f'<td class="num">{html.escape(str(c))}</td>' if i >= numeric_from
          else f'<td>{html.escape(str(c))}</td>' for i, c in enumerate(row))
      + '</tr>' for row in rows)
  return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _page(title: str, sections) -> str:
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
      '%Y-%m-%d %H:%M UTC')
  body = '\n'.join(sections)
  return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
          f'<title>{html.escape(title)}</title><style>{_STYLE}</style>'
          f'</head><body>\n<h1>{html.escape(title)}</h1>\n'
          f'<p>Written by mgtil_jax on {stamp}.</p>\n{body}\n</body></html>\n')


def _write(path: str, text: str) -> str:
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(path + '.tmp', path)
  return path


def run_page(results: dict, figures: dict | None = None) -> str:
  """The page of one run. `figures` ({file name: Figure}) defaults to
  figures_lib.RUN_FIGURES drawn afresh."""
  if figures is None:
    figures = {name: fn(results) for name, fn in figures_lib.RUN_FIGURES}
  tasks = results['tasks']
  names = [t['name'] for t in tasks]
  s = results['summary']
  wall = results.get('wall_time_s')
  meta = [['method', results['method']], ['benchmark', results['benchmark']],
          ['tasks', len(tasks)],
          ['wall time (s)', '–' if wall is None else f'{wall:.0f}'],
          ['devices', json.dumps(results.get('devices'))]]
  acc = results['accuracy_matrix']
  sequential = len(acc) == len(names)
  labels = ([f'after {i + 1} ({n})' for i, n in enumerate(names)]
            if sequential else ['after joint'])
  matrix_rows = ([['zero-shot'] + [_pct(v) for v in results['zero_shot']]] +
                 [[label] + [_pct(v) for v in row]
                  for label, row in zip(labels, acc)] +
                 [['(chance)'] + [_pct(t['chance']) for t in tasks]])
  task_rows = [
      [j + 1, t['name'], t['domain'], len(t['class_names']),
       f"{t['num_train']} / {t['num_test']}", _pct(t['chance']),
       _pct(results['zero_shot'][j]),
       _pct(acc[j][j]) if sequential else '–', _pct(acc[-1][j])]
      for j, t in enumerate(tasks)]
  sections = [
      '<h2>Run</h2>', _table(['', ''], meta, numeric_from=2),
      '<h2>Summary (%)</h2>',
      _table([label for _, label in _METRICS],
             [[_pct(s.get(key)) for key, _ in _METRICS]], numeric_from=0),
      '<h2>Accuracy matrix (%)</h2>',
      '<p>Row = after training task, column = evaluated task.</p>',
      _table(['after task'] + names, matrix_rows),
      '<h2>Tasks</h2>',
      _table(['#', 'task', 'domain', 'classes', 'train / test', 'chance',
              'zero-shot', 'just trained', 'final'], task_rows,
             numeric_from=3),
      '<h2>Plots</h2>']
  not_learned = results.get('not_learned') or []
  if not_learned:  # learned.py: said before the tables, loudly
    sections[0:0] = [
        '<h2>Warning: tasks that did not learn</h2>',
        '<p>Accuracy within 5 points of the majority-class rate, or '
        '&ge; 95 % of predictions one class, after the task\'s own '
        'training.</p>',
        _table(['task', 'accuracy', 'majority rate', 'top class',
                'its share', 'reason'],
               [[r['task'], _pct(r['acc']), _pct(r['majority_rate']),
                 r['top_class'], _pct(r['top_class_share']), r['reason']]
                for r in not_learned], numeric_from=1)]
  for name, fig in figures.items():
    if fig is not None:
      sections += [f'<h3>{html.escape(name)}</h3>', _img(fig, name)]
  sections += ['<h2>Config</h2>', '<details><summary>config</summary><pre>'
               + html.escape(json.dumps(results.get('config'), indent=1,
                                        default=str)) + '</pre></details>']
  return _page(f"{results['method']} on {results['benchmark']}", sections)


def write_run(workdir: str, results: dict, figures: dict | None = None) -> str:
  return _write(os.path.join(workdir, 'report.html'),
                run_page(results, figures))


def _with_spread(row: dict, metric: str) -> str:
  """'12.3 ± 1.0' (or '12.3 (−1.5 / +0.5)' for an asymmetric interval)
  when the row carries a spread over seeds ('ci' as [low, high] or a
  half-width, else 'summary_std'), else '12.3'."""
  value = _pct(row['summary'].get(metric))
  low, high = figures_lib.error_interval(row, metric)
  if low is None or value == '–':
    return value
  if abs(low - high) < 5e-4:
    return f'{value} ± {100 * low:.1f}'
  return f'{value} (−{100 * low:.1f} / +{100 * high:.1f})'


def comparison_page(table: dict, figure=None, over_time=None) -> str:
  """The page of a comparison (compare.py's table); `figure` defaults to
  comparison.plot drawn afresh; `over_time`, when given, is
  figures_lib.plot_methods_over_time of the methods' runs."""
  if figure is None:
    figure = comparison.plot(table)
  names = list(table['methods'])
  metrics = [(k, label) for k, label in _METRICS if k in comparison.METRICS]
  rows = []
  for name in names:
    row = table['methods'][name]
    wall = row.get('wall_time_s')
    seeds = row.get('seeds')
    rows.append([name] + [_with_spread(row, k) for k, _ in metrics] +
                [len(seeds) if isinstance(seeds, list) else (seeds or 1),
                 '–' if wall is None else f'{wall:.0f}'])
  last_rows = [[name] + [_pct(v) for v in table['methods'][name].get(
      'last_row') or []] for name in names]
  swatches = ''.join(
      f'<span class="swatch" style="background:{figures_lib.method_color(n)}">'
      f'</span>{html.escape(n)} &nbsp; ' for n in names)
  sections = [
      f"<p>{len(table['tasks'])} tasks; accuracy in %; joint = multi-task "
      'upper bound (Last only). Spread, when shown, is over seeds.</p>',
      '<h2>Methods (%)</h2>',
      _table(['method'] + [label for _, label in metrics] +
             ['seeds', 'time (s)'], rows),
      '<h2>Final accuracy per task (%)</h2>',
      _table(['method'] + list(table['tasks']), last_rows),
      '<h2>Plots</h2>', f'<p>{swatches}</p>',
      _img(figure, 'comparison.png')]
  if over_time is not None:
    sections.append(_img(over_time, 'comparison_over_time.png'))
  return _page(f"Methods on {table['benchmark']}", sections)


def _load_runs(workdir: str, table: dict) -> dict:
  """{method: results} of the comparison's runs; with several seeds, those
  of the first seed (workdir/seed_<s>/<method>)."""
  seeds = table.get('seeds') or []
  if len(seeds) > 1:
    workdir = os.path.join(workdir, f'seed_{seeds[0]}')
  runs = {}
  for name in table['methods']:
    path = os.path.join(workdir, name, 'results.json')
    if os.path.exists(path):
      with open(path) as f:
        runs[name] = json.load(f)
  return runs


def write_comparison(workdir: str, table: dict, figure=None) -> str:
  """report.html of a comparison, and comparison_over_time.png from the
  methods' results.json files in workdir/<method>/ (when there are any)."""
  over_time = figures_lib.plot_methods_over_time(
      _load_runs(workdir, table),
      os.path.join(workdir, 'comparison_over_time.png'))
  return _write(os.path.join(workdir, 'report.html'),
                comparison_page(table, figure, over_time))
