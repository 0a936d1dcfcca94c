"""benchmarks/reference_makeup.py classifies reference pairs by the
synthetic corpus's ground truth (issue 23.5). Expected kinds are written
out by hand from the task definitions in mgtil_jax/data/synth.py."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'benchmarks'))
import reference_makeup as rm  # pylint: disable=g-import-not-at-top,wrong-import-position

DOMAINS = ['xray', 'xray', 'pathology', '', 'xray']
FINDINGS = ['nodule', 'granuloma', 'adenoma', '', 'pleural effusion']


def test_kinds_after_the_first_task():
  kinds = [rm.classify(i, DOMAINS, FINDINGS, ['xray_lesion'])
           for i in range(5)]
  assert kinds == ['trained finding', 'trained domain', 'other domain',
                   'distractor', 'trained domain']


def test_kinds_grow_with_the_trained_tasks():
  trained = ['xray_lesion', 'xray_pattern', 'xray_region', 'path_grade']
  kinds = [rm.classify(i, DOMAINS, FINDINGS, trained) for i in range(5)]
  assert kinds == ['trained finding'] * 3 + ['distractor', 'trained finding']


def test_makeup_shares_sum_to_one():
  m = rm.makeup([0, 0, 1, 3], DOMAINS, FINDINGS, ['xray_lesion'])
  assert m['size'] == 4
  assert m['trained finding'] == pytest.approx(0.5)
  assert m['trained domain'] == pytest.approx(0.25)
  assert m['distractor'] == pytest.approx(0.25)
  assert sum(m[k] for k in rm.KINDS) == pytest.approx(1.0)
