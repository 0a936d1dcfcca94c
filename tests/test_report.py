"""mgtil_jax.report's tables and plots: full task names, titles and
legends inside the canvas and off the data, one colour per method, loss
terms with and without per-term curves; compare.plot's error bars."""

import os
import re

import numpy as np
import pytest
from matplotlib.container import BarContainer
from matplotlib.colors import to_hex

from mgtil_jax import methods
from mgtil_jax.entry import compare
from mgtil_jax import reporting as report
import report_fixtures as fx


def _inside(fig, *artists):
  """Every artist's drawn box lies within the figure canvas (1 px slack).
  One layout pass: constrained layout runs at draw time."""
  fig.draw_without_rendering()
  canvas = fig.bbox
  for artist in artists:
    box = artist.get_window_extent()
    if not (box.x0 >= canvas.x0 - 1 and box.y0 >= canvas.y0 - 1 and
            box.x1 <= canvas.x1 + 1 and box.y1 <= canvas.y1 + 1):
      return False
  return True


def test_table_keeps_full_task_names_and_values():
  r = fx.results()
  table = report.format_table(r)
  for i, name in enumerate(fx.LONG_NAMES):
    assert name in table.splitlines()[2]  # header
    assert f'| {i + 1} {name} ' in table
  # Each row's cells are the matrix in %, to one decimal.
  rows = [l for l in table.splitlines() if re.match(r'\| \d ', l)]
  for line, expected in zip(rows, np.asarray(r['accuracy_matrix']) * 100):
    cells = [float(c) for c in line.strip('|').split('|')[1:]]
    np.testing.assert_allclose(cells, expected, atol=0.0501)


def test_wrap_name_breaks_at_separators_and_loses_nothing():
  assert report.wrap_name('short') == 'short'
  wrapped = report.wrap_name('organamnist_abdominal_ct', 14)
  assert wrapped.split('\n') == ['organamnist_', 'abdominal_ct']
  long = report.wrap_name('a' * 40, 14)
  assert all(len(l) <= 14 for l in long.split('\n'))
  assert long.replace('\n', '') == 'a' * 40


def test_one_distinct_stable_colour_per_method():
  colours = [report.method_color(m) for m in methods.METHODS]
  assert len(set(colours)) == len(colours)
  assert report.method_color('primed') == report.method_color('primed')
  assert report.method_color('my_new_method') == report.method_color(
      'my_new_method')


def test_heatmap_title_and_labels_fit():
  fig = report.plot_accuracy_matrix(fx.results())
  ax = fig.axes[0]
  assert 'Transfer' in ax.get_title() and 'BWT' in ax.get_title()
  assert _inside(fig, ax.title, *ax.get_xticklabels())
  assert 'organamnist_\nabdominal_ct' in [l.get_text()
                                           for l in ax.get_xticklabels()]


def test_accuracy_over_time_legend_is_outside_the_data():
  fig = report.plot_accuracy_over_time(fx.results())
  ax = fig.axes[0]
  legend = ax.get_legend()
  assert _inside(fig, legend, ax.title)
  assert not legend.get_window_extent().overlaps(ax.get_window_extent())
  # Joint training has no sequence to draw.
  joint = fx.results()
  joint['accuracy_matrix'] = joint['accuracy_matrix'][-1:]
  assert report.plot_accuracy_over_time(joint) is None


@pytest.mark.parametrize('terms', [True, False])
def test_loss_terms_plot(terms):
  r = fx.results(terms=terms)
  fig = report.plot_loss_terms(r)
  panels = [ax for ax in fig.axes if ax.lines]
  assert len(panels) == len(fx.LONG_NAMES)
  want = ['total'] + (['ce', 'ckt', 'dfg'] if terms else [])
  for ax in panels:
    assert [l.get_label() for l in ax.lines] == want
    # Same colour for a term in every panel; the total is black.
    assert to_hex(ax.lines[0].get_color()) == '#000000'
    np.testing.assert_allclose(ax.lines[0].get_ydata(),
                               [3.0 / s + 0.5 for s in range(1, 11)])
  legend = fig.legends[0]
  assert [t.get_text() for t in legend.get_texts()] == want
  assert _inside(fig, legend)
  assert report.plot_loss_terms(dict(r, train_curves=[])) is None


def test_loss_terms_plot_of_one_phase():
  # Joint training logs one phase over all tasks: a single panel.
  r = fx.results(terms=True)
  r = dict(r, train_curves=r['train_curves'][:1])
  fig = report.plot_loss_terms(r)
  panels = [ax for ax in fig.axes if ax.lines]
  assert len(panels) == 1
  assert [l.get_label() for l in panels[0].lines] == ['total', 'ce', 'ckt',
                                                      'dfg']


def test_error_interval_reads_ci_bounds_half_width_and_std():
  row = {'summary': {'last': 0.5, 'avg': 0.4, 'bwt': 0.1, 'acc': None},
         'ci': {'last': [0.45, 0.6], 'avg': 0.02},
         'summary_std': {'bwt': 0.03, 'acc': 0.01}}
  np.testing.assert_allclose(report.error_interval(row, 'last'), (0.05, 0.1))
  np.testing.assert_allclose(report.error_interval(row, 'avg'), (0.02, 0.02))
  np.testing.assert_allclose(report.error_interval(row, 'bwt'), (0.03, 0.03))
  assert report.error_interval(row, 'acc') == (None, None)
  assert report.error_interval({'summary': {'last': 0.5}}, 'last') == (
      None, None)


def _bars(fig):
  return [c for ax in fig.axes for c in ax.containers
          if isinstance(c, BarContainer)]


@pytest.mark.parametrize('spread', [None, 'std', 'ci'])
def test_comparison_plot_colours_and_error_bars(spread):
  table = fx.comparison(spread=spread)
  fig = compare.plot(table)
  bars = _bars(fig)
  assert len(bars) == 4  # Transfer, Avg, Last, BWT
  for container in bars:
    assert [to_hex(p.get_facecolor()) for p in container.patches] == [
        report.method_color(m) for m in table['methods']]
    assert (container.errorbar is not None) == (spread is not None)
  if spread == 'ci':  # Last of 'ft': 0.5 with bounds [0.47, 0.51]
    last = bars[2]
    segments = last.errorbar.lines[2][0].get_segments()
    np.testing.assert_allclose(segments[0][:, 1], [47.0, 51.0])
  assert _inside(fig, fig._suptitle,  # pylint: disable=protected-access
                 *[l for ax in fig.axes for l in ax.get_xticklabels()])


def test_final_summary_lists_metrics_and_existing_outputs(tmp_path):
  r = fx.results()
  report.write_run(str(tmp_path), r)
  text = report.final_summary(r, str(tmp_path))
  assert 'Last 62.0' in text and 'BWT -14.3' in text
  for name in ('report.html', 'results.json', 'results.md',
               'accuracy_matrix.png', 'accuracy_over_time.png',
               'loss_terms.png'):
    assert os.path.exists(tmp_path / name)
    assert name in text
  assert 'tensorboard' not in text  # not written here


def test_methods_over_time_one_colour_per_method():
  ft, primed = fx.results(method='ft'), fx.results(method='primed', seed=1)
  joint = fx.results(method='joint')
  joint['accuracy_matrix'] = joint['accuracy_matrix'][-1:]
  fig = report.plot_methods_over_time({'ft': ft, 'primed': primed,
                                       'joint': joint, 'ewc': None})
  left, right = fig.axes[:2]
  assert [l.get_label() for l in left.lines] == ['ft', 'primed',
                                                 'joint (final)']
  for line in left.lines + right.lines:
    method = line.get_label().split()[0]
    assert to_hex(line.get_color()) == report.method_color(method)
  # Left: mean of each row (zero-shot first); right: mean of the tasks
  # learned so far (NumPy on the fixture's matrix).
  mat = np.vstack([ft['zero_shot'], ft['accuracy_matrix']]) * 100
  np.testing.assert_allclose(left.lines[0].get_ydata(), mat.mean(1))
  np.testing.assert_allclose(right.lines[0].get_ydata()[1:],
                             [mat[t, :t].mean() for t in range(1, 4)])
  np.testing.assert_allclose(left.lines[2].get_ydata(),
                             [100 * np.mean(joint['accuracy_matrix'][-1])] * 2)
  assert _inside(fig, fig.legends[0])
  assert report.plot_methods_over_time({}) is None
