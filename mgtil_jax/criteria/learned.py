"""Did a task learn? The check a run makes after each task's own training.

A task has NOT learned when, on its evaluation split, right after the
training phase that included it (its own task for sequential methods, the
one phase of joint training):

  - its accuracy is at most the majority-class rate + `MARGIN` (5 points):
    a constant predictor of the most frequent class scores the majority
    rate, so anything within a few points of it has learned (almost) nothing
    beyond the class prior; or
  - at least `COLLAPSE` (95 %) of its predictions are one class: the
    classifier collapsed (a balanced task then sits near chance; an
    imbalanced one may still score well above chance on accuracy alone).

The run logs a warning per task, records every case in results.json
(`not_learned: [{task, acc, majority_rate, top_class_share, top_class,
reason}]`) and repeats them in the final summary (docs/methods.md,
"Tasks that did not learn").
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

MARGIN = 0.05    # accuracy <= majority-class rate + 5 points
COLLAPSE = 0.95  # >= 95 % of predictions in one class


def check(task: str, labels, predictions, class_names, *,
          margin: float = MARGIN, collapse: float = COLLAPSE) -> dict | None:
  """The not-learned record of one task, or None if it learned.

  labels, predictions: int[N] on the task's evaluation split."""
  labels = np.asarray(labels).reshape(-1)
  predictions = np.asarray(predictions).reshape(-1)
  if labels.shape != predictions.shape or not labels.size:
    raise ValueError(f'task {task}: labels {labels.shape} and predictions '
                     f'{predictions.shape} must be equal, non-empty shapes')
  n_classes = max(len(class_names), int(labels.max()) + 1,
                  int(predictions.max()) + 1)
  majority = float(np.bincount(labels, minlength=n_classes).max()
                   / labels.size)
  pred_counts = np.bincount(predictions, minlength=n_classes)
  top = int(pred_counts.argmax())
  share = float(pred_counts[top] / predictions.size)
  acc = float(np.mean(labels == predictions))
  top_name = class_names[top] if top < len(class_names) else str(top)
  reasons = []
  if acc <= majority + margin:
    reasons.append(f'accuracy {100 * acc:.1f}% is within '
                   f'{100 * margin:.0f} points of the majority-class rate '
                   f'{100 * majority:.1f}%')
  if share >= collapse:
    reasons.append(f'{100 * share:.1f}% of predictions are one class '
                   f'({top_name!r})')
  if not reasons:
    return None
  return {'task': task, 'acc': acc, 'majority_rate': majority,
          'top_class_share': share, 'top_class': top_name,
          'reason': '; '.join(reasons)}


def check_phase(tasks, trained, predictions) -> list[dict]:
  """Records of the tasks in `trained` (indices) that did not learn, each
  also logged as a warning. tasks: the run's TaskData list; predictions:
  {task index: int[N] predictions on its test split}."""
  out = []
  for t in trained:
    task = tasks[t]
    rec = check(task.name, task.test_labels, predictions[t],
                task.class_names)
    if rec is not None:
      log.warning('!!! TASK %r DID NOT LEARN: %s. Check its data, the '
                  'learning rate and steps (docs/methods.md, "Tasks that '
                  'did not learn").', task.name, rec['reason'])
      out.append(rec)
  return out


def summary_lines(records) -> list[str]:
  """The lines the final summary prints (none when every task learned)."""
  if not records:
    return []
  lines = [f'WARNING: {len(records)} task(s) did not learn (accuracy within '
           f'{100 * MARGIN:.0f} points of the majority-class rate, or '
           f'>= {100 * COLLAPSE:.0f}% of predictions one class):']
  for r in records:
    lines.append(f"  {r['task']}: acc {100 * r['acc']:.1f}%, majority "
                 f"{100 * r['majority_rate']:.1f}%, top class "
                 f"{r['top_class']!r} {100 * r['top_class_share']:.1f}% of "
                 'predictions')
  return lines
