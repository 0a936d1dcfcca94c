"""Losses as small pure functions with keyword-only hyper-parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def classification_loss(logits, labels, *, label_smoothing: float = 0.0):
  """Mean cross-entropy of float[B, C] logits against int[B] labels, with
  labels smoothed towards uniform by `label_smoothing`."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def clip_contrastive_loss(logits):
  """Symmetric InfoNCE of a float[B, B] image-text logit matrix against the
  identity: (CE(rows) + CE(columns)) / 2, as in CLIP."""
  labels = jnp.arange(logits.shape[0])
  rows = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  cols = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
  return (rows.mean() + cols.mean()) / 2


def l2_to_anchor(params, anchor_params):
  """sum_i (theta_i - anchor_i)^2 over all parameters."""
  sq = jax.tree.map(lambda p, a: jnp.sum(jnp.square(p - a)), params,
                    anchor_params)
  return sum(jax.tree.leaves(sq))
