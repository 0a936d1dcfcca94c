"""benchmarks/start_features.py on a tiny run: one row per task, the
majority rate of the synthetic benchmark's balanced test split (1 / number of
classes, by construction of configs/mgtil_synth.py's test_per_class), and
accuracies that are rates."""

import json
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'benchmarks')
sys.path.insert(0, BENCH)
import start_features  # pylint: disable=g-import-not-at-top,wrong-import-position

from mgtil_jax.data import synth  # pylint: disable=g-import-not-at-top


def test_rows_per_task(tmp_path, monkeypatch):
  out = tmp_path / 'start.json'
  monkeypatch.setattr(sys, 'argv', [
      'start_features.py', '--config=configs/mgtil_synth.py:runlocal,tasks=2',
      f'--cache_dir={tmp_path / "cache"}', f'--out={out}'])
  start_features.main()
  with open(out) as f:
    rows = json.load(f)['rows']
  order = synth.ORDERS['domain'][:2]
  assert [r['task'] for r in rows] == list(order)
  for r in rows:
    n = len(synth.TASKS[r['task']].class_names)
    assert r['majority_rate'] == pytest.approx(1 / n)
    assert 0.0 <= r['zero_shot'] <= 1.0
    assert 0.0 <= r['centroid_accuracy'] <= 1.0
