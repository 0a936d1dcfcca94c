"""Losses as small pure functions with keyword-only hyper-parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def classification_loss(logits, labels, *, label_smoothing: float = 0.0,
                        class_weights=None, mask=None):
  """Mean cross-entropy of float[B, C] logits against int[B] labels, with
  labels smoothed towards uniform by `label_smoothing`. With float[C]
  `class_weights`, the weighted mean sum_i w[y_i] CE_i / sum_i w[y_i]
  (PyTorch's `CrossEntropyLoss(weight=...)`; docs/methods.md, "Class
  balance").

  bool[B, C] `mask`: the classes each row is scored among (iCaRL's replay:
  the exemplar's own task). The smoothing mass goes to those classes only,
  and the excluded logits leave the softmax: a target on an excluded class
  would push every valid logit down together (issue 25)."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if mask is not None:
    mask = jnp.asarray(mask, bool)
    logits = jnp.where(mask, logits, -1e9)
    if label_smoothing:
      valid = mask.astype(targets.dtype)
      targets = ((1.0 - label_smoothing) * targets + label_smoothing * valid
                 / jnp.maximum(valid.sum(-1, keepdims=True), 1.0))
  elif label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  per_example = optax.softmax_cross_entropy(logits, targets)
  if class_weights is None:
    return per_example.mean()
  w = jnp.asarray(class_weights, per_example.dtype)[labels]
  return jnp.sum(w * per_example) / jnp.maximum(jnp.sum(w), 1e-12)


def balanced_class_weights(labels, num_classes: int):
  """float32[C] inverse class frequencies of int[N] `labels`, scaled to a
  mean of 1 over the examples (sklearn's compute_class_weight('balanced'):
  N / (C * count)); a class absent from `labels` gets weight 0."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  counts = np.bincount(np.asarray(labels), minlength=num_classes)
  w = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)),
               0.0)
  return w.astype(np.float32)


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


def weighted_l2(params, anchor_params, weights=None):
  """sum_i w_i (theta_i - anchor_i)^2; `weights` None means all ones (l2).

  One function for every quadratic pull towards old weights: l2 (w = 1),
  EWC (w = a per-task Fisher diagonal) and DFG (w = the squared gradient of
  the distillation terms at this step)."""
  if weights is None:
    return l2_to_anchor(params, anchor_params)
  sq = jax.tree.map(lambda p, a, w: jnp.sum(w * jnp.square(p - a)), params,
                    anchor_params, weights)
  return sum(jax.tree.leaves(sq))


def _kl_rows(teacher_logits, student_logits):
  """mean over rows of KL(softmax(teacher row) || softmax(student row))."""
  t_logp = jax.nn.log_softmax(teacher_logits, axis=-1)
  s_logp = jax.nn.log_softmax(student_logits, axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), axis=-1))


DIRECTIONS = ('both', 'image', 'text')


def _check_direction(direction: str):
  if direction not in DIRECTIONS:
    raise ValueError(f'direction: expected one of {DIRECTIONS}, got '
                     f'{direction!r}')


def cross_modal_kd(student_logits, teacher_logits, *, temperature: float = 1.0,
                   direction: str = 'both'):
  """CKT: KL from teacher to student image-text similarity distributions.

  float[B, B] logits (rows = images, columns = texts), both divided by
  `temperature`. 'image' distils the rows (each image's distribution over
  the batch's texts), 'text' the columns, 'both' the sum (PRIMED's default).
  Rows/columns are averaged (not summed) so the weight alpha does not depend
  on the batch size. The teacher gets no gradient.
  """
  _check_direction(direction)
  teacher_logits = jax.lax.stop_gradient(teacher_logits) / temperature
  student_logits = student_logits / temperature
  out = 0.0
  if direction in ('both', 'image'):
    out += _kl_rows(teacher_logits, student_logits)
  if direction in ('both', 'text'):
    out += _kl_rows(teacher_logits.T, student_logits.T)
  return out


def cross_modal_contrastive(logits, *, direction: str = 'both'):
  """CMC: InfoNCE of float[B, B] image-text logits against the identity;
  'both' = image->text + text->image (summed, docs/methods.md Eq. CMC)."""
  _check_direction(direction)
  labels = jnp.arange(logits.shape[0])
  out = 0.0
  if direction in ('both', 'image'):
    out += optax.softmax_cross_entropy_with_integer_labels(logits,
                                                           labels).mean()
  if direction in ('both', 'text'):
    out += optax.softmax_cross_entropy_with_integer_labels(logits.T,
                                                           labels).mean()
  return out


DFG_NORMALIZE = ('none', 'mean', 'max')


def dfg_weights(distill_grads, *, normalize: str = 'none', eps: float = 1e-30):
  """DFG's per-parameter weights: the squared distillation gradient of this
  step, as a constant (no gradient flows through it), normalised per tensor:

    'none'  W = g^2 (raw squared gradients, ~1e-8 per weight on CLIP)
    'mean'  W = g^2 / mean(g^2) over the tensor (mean weight 1 per tensor)
    'max'   W = g^2 / max(g^2) over the tensor (weights in [0, 1])

  docs/methods.md ("DFG normalisation") says where each comes from."""
  if normalize not in DFG_NORMALIZE:
    raise ValueError(f'dfg_normalize: expected one of {DFG_NORMALIZE}, got '
                     f'{normalize!r}')

  def weight(g):
    w = jnp.square(jax.lax.stop_gradient(g))
    if normalize == 'mean':
      w = w / (jnp.mean(w) + eps)
    elif normalize == 'max':
      w = w / (jnp.max(w) + eps)
    return w

  return jax.tree.map(weight, distill_grads)


def dynamic_fisher_guard(params, previous_params, distill_grads, *,
                         normalize: str = 'none'):
  """L_DFG = sum_i W_i (theta_i - theta_prev_i)^2 with W = dfg_weights(
  dL_distill/dtheta, normalize) held constant (docs/methods.md, Eq. DFG)."""
  return weighted_l2(params, jax.lax.stop_gradient(previous_params),
                     dfg_weights(distill_grads, normalize=normalize))


def distillation_kl(student_logits, teacher_logits, *,
                    temperature: float = 1.0):
  """LwF / iCaRL style KD on class logits float[B, C]: mean KL(teacher ||
  student) at `temperature`, times T^2 (Hinton et al. 2015) so gradients keep
  their scale across temperatures."""
  return _kl_rows(jax.lax.stop_gradient(teacher_logits) / temperature,
                  student_logits / temperature) * temperature ** 2


def selective_dual_teacher_kd(student_features, previous_features,
                              initial_features, *, threshold: float = 0.2,
                              scale: float = 6.0):
  """SnD (Yu et al. ECCV 2024, docs/methods.md Eq. SnD): feature KD from two
  teachers, each sample routed by how far the teachers disagree on it.

  float[B, D] L2-normalised image features of the student, the previous-task
  model and the initial (pre-trained) model. s_i = sigmoid(scale * (
  ||f_prev(x_i) - f_init(x_i)|| - threshold)); a large disagreement means the
  sample is close to what the previous tasks taught, so it is distilled from
  the previous model, else from the initial one. Returns the two terms
  (mean_i s_i ||f(x_i) - f_prev(x_i)||, mean_i (1 - s_i) ||f(x_i) -
  f_init(x_i)||); the teachers and the scores get no gradient."""
  previous_features = jax.lax.stop_gradient(previous_features)
  initial_features = jax.lax.stop_gradient(initial_features)
  scores = jax.nn.sigmoid(scale * (jnp.linalg.norm(
      previous_features - initial_features, axis=-1) - threshold))
  to_previous = jnp.linalg.norm(student_features - previous_features, axis=-1)
  to_initial = jnp.linalg.norm(student_features - initial_features, axis=-1)
  return (jnp.mean(scores * to_previous),
          jnp.mean((1 - scores) * to_initial))


def soft_image_text_alignment(logits, same, *, label_smoothing: float = 0.0):
  """GIFT's image-text alignment (docs/methods.md Eq. ITA): CE of the
  float[B, B] image-text logits against targets spread evenly over the
  captions of the same class (`same` bool[B, B], True on the diagonal),
  rows (image -> text) plus columns (text -> image)."""
  targets = same.astype(logits.dtype)
  targets = targets / jnp.sum(targets, axis=1, keepdims=True)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  rows = optax.softmax_cross_entropy(logits, targets).mean()
  cols = optax.softmax_cross_entropy(logits.T, targets.T).mean()
  return rows + cols
