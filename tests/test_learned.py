"""The not-learned check (mgtil_jax/criteria/learned.py): the majority-class rate
against an independent NumPy count (np.unique), a collapsed predictor that
must warn, a good one that must not, and the rule's 5-point boundary."""

import logging

import numpy as np
import pytest

from mgtil_jax.criteria import learned
from mgtil_jax import reporting as report


def _majority_np(labels):
  _, counts = np.unique(labels, return_counts=True)
  return counts.max() / len(labels)


def test_constant_majority_predictor_warns(caplog):
  # The pneumonia test split's counts: 234 normal, 390 pneumonia.
  labels = np.array([0] * 234 + [1] * 390)
  preds = np.ones_like(labels)  # everything "pneumonia"
  with caplog.at_level(logging.WARNING):
    rec = learned.check('pneumonia', labels, preds, ('normal', 'pneumonia'))
  assert rec is not None
  assert rec['majority_rate'] == pytest.approx(_majority_np(labels))
  assert rec['majority_rate'] == pytest.approx(390 / 624)
  assert rec['acc'] == pytest.approx(np.mean(preds == labels))
  assert rec['top_class_share'] == 1.0 and rec['top_class'] == 'pneumonia'
  assert 'majority-class rate' in rec['reason'] and 'one class' in rec['reason']


def test_learned_task_does_not_warn():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 400)
  preds = labels.copy()
  wrong = rng.random(400) < 0.3  # 70 % accuracy on 5 roughly equal classes
  preds[wrong] = (labels[wrong] + 1) % 5
  assert np.mean(preds == labels) > _majority_np(labels) + 0.05
  assert learned.check('retina', labels, preds, tuple('abcde')) is None


def test_margin_boundary():
  # 100 labels, 60 % class 0; a model at 65 % warns, one at 66 % does not.
  labels = np.array([0] * 60 + [1] * 40)
  at = labels.copy()
  at[:35] = 1          # 35 wrong: 65 % correct = majority + 5 points
  above = labels.copy()
  above[:34] = 1       # 34 wrong: 66 %
  assert np.mean(at == labels) == pytest.approx(0.65)
  assert learned.check('t', labels, at, ('a', 'b')) is not None
  assert learned.check('t', labels, above, ('a', 'b')) is None


def test_phase_records_and_summary(caplog):
  class Task:  # the fields of tasks.TaskData that the check reads
    def __init__(self, name, labels):
      self.name, self.test_labels, self.class_names = name, labels, ('a', 'b')
  good = Task('good', np.array([0, 1] * 50))
  bad = Task('bad', np.array([0, 1] * 50))
  preds = {0: good.test_labels.copy(), 1: np.zeros(100, int)}
  with caplog.at_level(logging.WARNING):
    recs = learned.check_phase([good, bad], [0, 1], preds)
  assert [r['task'] for r in recs] == ['bad']
  assert 'DID NOT LEARN' in caplog.text and "'bad'" in caplog.text
  lines = learned.summary_lines(recs)
  assert lines[0].startswith('WARNING: 1 task(s) did not learn')
  text = report.final_summary({'method': 'ft', 'benchmark': 'b',
                               'tasks': [{}, {}], 'summary': {},
                               'not_learned': recs}, '/nonexistent')
  assert 'bad: acc 50.0%, majority 50.0%' in text
  assert learned.summary_lines([]) == []


def test_report_page_shows_the_warning():
  from mgtil_jax.reporting import pages as html_report  # pylint: disable=g-import-not-at-top
  import report_fixtures as fx  # pylint: disable=g-import-not-at-top
  res = fx.results()
  assert 'did not learn' not in html_report.run_page(res, figures={})
  res['not_learned'] = [learned.check('pneumoniamnist', [0, 1, 1, 1],
                                      [1, 1, 1, 1], ('normal', 'pneumonia'))]
  page = html_report.run_page(res, figures={})
  assert 'tasks that did not learn' in page and 'pneumoniamnist' in page
