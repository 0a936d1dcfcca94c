"""benchmarks/learning_probe.py: its NumPy diagnostics, checked on hand-made
embeddings whose answers are known by construction (no model involved)."""

import os
import sys

import numpy as np

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'benchmarks')
sys.path.insert(0, BENCH)
import learning_probe as probe  # pylint: disable=g-import-not-at-top,wrong-import-position


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_nearest_centroid_separates_and_fails_on_collapse():
  rng = np.random.default_rng(0)
  axes = np.eye(8)[:3]  # three classes along three orthogonal axes
  labels = np.repeat(np.arange(3), 40)
  train = _unit(axes[labels] + 0.1 * rng.normal(size=(120, 8)))
  test = _unit(axes[labels] + 0.1 * rng.normal(size=(120, 8)))
  pred = probe.nearest_centroid(train, labels, test, 3)
  assert np.mean(pred == labels) == 1.0
  # Collapsed embeddings (one point plus noise): no better than chance.
  point = np.ones(8)
  train_c = _unit(point + 0.01 * rng.normal(size=(120, 8)))
  test_c = _unit(point + 0.01 * rng.normal(size=(120, 8)))
  acc = np.mean(probe.nearest_centroid(train_c, labels, test_c, 3) == labels)
  assert acc < 0.6


def test_embedding_stats_match_definitions():
  # Two classes at +-e0 with within-class offsets +-0.1 e1: between-class
  # scatter 1 per point, within-class 0.01, so the Fisher ratio is 100
  # (before normalisation; the inputs here are already near unit length).
  img = np.array([[1, 0.1], [1, -0.1], [-1, 0.1], [-1, -0.1]], np.float64)
  labels = np.array([0, 0, 1, 1])
  cls = np.array([[1.0, 0.0], [0.0, 1.0]])
  stats = probe.embedding_stats(cls, img, labels)
  assert np.isclose(stats['fisher'], 1.0 / 0.01)
  assert np.isclose(stats['class_cos_max'], 0.0)
  assert np.isclose(stats['image_cos_mean'], (img @ img.T).mean())
