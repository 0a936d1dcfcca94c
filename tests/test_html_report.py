"""report.html of a run and of a comparison: parsed with html.parser, every
table and every inline PNG is there, and nothing points outside the page."""

import base64
import html.parser
import json

from mgtil_jax.entry import compare
from mgtil_jax.reporting import pages as html_report
from mgtil_jax import reporting as report
from mgtil_jax.reporting import outputs
import report_fixtures as fx


class _Page(html.parser.HTMLParser):
  """Tables as lists of rows of cell texts; images as their src; any
  href/src that is not inline."""

  def __init__(self):
    super().__init__()
    self.tables, self.images, self.external = [], [], []
    self._cell = None

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == 'table':
      self.tables.append([])
    elif tag == 'tr':
      self.tables[-1].append([])
    elif tag in ('td', 'th'):
      self._cell = ''
    elif tag == 'img':
      self.images.append(attrs)
    for key in ('src', 'href'):
      if key in attrs and not attrs[key].startswith('data:'):
        self.external.append(attrs[key])

  def handle_endtag(self, tag):
    if tag in ('td', 'th'):
      self.tables[-1][-1].append(self._cell.strip())
      self._cell = None

  def handle_data(self, data):
    if self._cell is not None:
      self._cell += data


def _parse(text):
  page = _Page()
  page.feed(text)
  page.close()
  assert not page.external, page.external
  for img in page.images:
    prefix = 'data:image/png;base64,'
    assert img['src'].startswith(prefix)
    assert base64.b64decode(img['src'][len(prefix):])[:8] == (
        b'\x89PNG\r\n\x1a\n')
  return page


def test_run_page_has_every_table_and_plot(tmp_path):
  r = fx.results()
  report.write_run(str(tmp_path), r)  # writes report.html beside the PNGs
  page = _parse((tmp_path / 'report.html').read_text())
  # Run, summary, accuracy matrix, tasks.
  assert len(page.tables) == 4
  summary = dict(zip(*page.tables[1]))
  assert summary['Last'] == '62.0' and summary['BWT'] == '-14.3'
  matrix = page.tables[2]
  assert matrix[0] == ['after task'] + list(fx.LONG_NAMES)  # full names
  assert matrix[1][0] == 'zero-shot' and matrix[-1][0] == '(chance)'
  assert matrix[2][1:] == [f'{100 * v:.1f}' for v in r['accuracy_matrix'][0]]
  assert [img['alt'] for img in page.images] == [
      'accuracy_matrix.png', 'accuracy_over_time.png', 'loss_terms.png']


def test_run_page_without_curves_or_sequence():
  r = fx.results()
  r['accuracy_matrix'] = r['accuracy_matrix'][-1:]  # joint training
  r['train_curves'] = []
  page = _parse(html_report.run_page(r))
  assert len(page.tables) == 4
  assert [img['alt'] for img in page.images] == ['accuracy_matrix.png']


def test_comparison_page(tmp_path):
  table = fx.comparison(spread='std')
  # Two of the three methods have their run's results.json beside it.
  for name in ('ft', 'primed'):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'results.json').write_text(
        json.dumps(fx.results(method=name)))
  outputs.write_comparison(str(tmp_path), table)
  assert (tmp_path / 'comparison.png').exists()
  assert (tmp_path / 'comparison_over_time.png').exists()
  page = _parse((tmp_path / 'report.html').read_text())
  assert len(page.tables) == 2
  assert [img['alt'] for img in page.images] == [
      'comparison.png', 'comparison_over_time.png']
  methods_table = page.tables[0]
  assert [row[0] for row in methods_table[1:]] == list(table['methods'])
  head = methods_table[0]
  ft = dict(zip(head, methods_table[1]))
  assert ft['Last'] == '50.0 ± 2.0'  # summary_std 0.02
  joint = dict(zip(head, methods_table[3]))
  assert joint['Transfer'] == '–'
  assert page.tables[1][0] == ['method'] + list(fx.LONG_NAMES)


def test_comparison_page_asymmetric_ci():
  page = _parse(html_report.comparison_page(fx.comparison(spread='ci')))
  head, ft = page.tables[0][0], page.tables[0][1]
  assert dict(zip(head, ft))['Last'] == '50.0 (−3.0 / +1.0)'  # [0.47, 0.51]
