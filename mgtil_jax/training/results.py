"""results.json of a run: the accuracy and AUC matrices, the summary
metrics (docs/metrics.md), the loss curves, the config and the versions."""

from __future__ import annotations

import importlib.metadata
import math
import platform

import jax
import numpy as np

from mgtil_jax.criteria import metrics


PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy',
            'mgtil_jax')


def _versions() -> dict:
  out = {}
  for p in PACKAGES:
    try:
      out[p] = importlib.metadata.version(p)
    except importlib.metadata.PackageNotFoundError:
      out[p] = None
  out['python'] = platform.python_version()
  return out


def _nan_to_none(x):
  if isinstance(x, float) and math.isnan(x):
    return None
  if isinstance(x, dict):
    return {k: _nan_to_none(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_nan_to_none(v) for v in x]
  return x


def build_results(exp, meta: dict, wall_time: float) -> dict:
  acc = np.asarray(meta['acc_rows'], np.float64)
  auc = np.asarray(meta['auc_rows'], np.float64)
  if getattr(exp.method, 'per_task_bound', False):
    # single_task: row t is the model trained on task t alone, so only the
    # diagonal is a result (the per-task bound); no sequence, no forgetting.
    summary = {k: float('nan') for k in ('transfer', 'avg', 'bwt',
                                         'forgetting')}
    summary.update(last=float(np.diag(acc).mean()),
                   zero_shot_mean=float(np.mean(meta['zero_shot'])))
  elif acc.shape[0] == acc.shape[1]:
    summary = metrics.continual_metrics(acc, meta['zero_shot'])
  else:  # joint training: one row, only the final-accuracy metrics apply
    summary = {k: float('nan') for k in ('transfer', 'avg', 'bwt',
                                         'forgetting')}
    summary.update(last=float(acc[-1].mean()),
                   zero_shot_mean=float(np.mean(meta['zero_shot'])))
  # ACC / AUC as the paper's MedXtreme table: the final row's means (the
  # diagonal's for single_task, whose final row is one task's model).
  final_acc, final_auc = acc[-1], auc[-1]
  if getattr(exp.method, 'per_task_bound', False):
    final_acc, final_auc = np.diag(acc), np.diag(auc)
  summary['acc'] = float(final_acc.mean())
  summary['auc'] = float(np.nanmean(final_auc)) if np.isfinite(
      final_auc).any() else float('nan')
  tasks = [{'name': t.name, 'domain': t.domain,
            'class_names': list(t.class_names),
            'num_train': int(len(t.train_labels)),
            'num_test': int(len(t.test_labels)),
            'chance': 1.0 / len(t.class_names)} for t in exp.tasks]
  return _nan_to_none({
      'method': exp.config.method,
      'benchmark': exp.config.data.name,
      'tasks': tasks,
      'accuracy_matrix': acc.tolist(),
      'auc_matrix': auc.tolist(),
      'zero_shot': list(meta['zero_shot']),
      'zero_shot_auc': list(meta['zero_shot_auc']),
      'summary': summary,
      # Per task: 'loss', 'terms' {name: [[step, value]]} and 'grad_share'
      # {group or term: [[step, share of the summed gradient norms]]}.
      'train_curves': meta['train_curves'],
      'reference': meta.get('reference', []),
      # Tasks whose accuracy after their own training stayed near the
      # majority-class rate, or whose predictions collapsed (learned.py).
      'not_learned': meta.get('not_learned', []),
      # single_task only: the diagonal, each task by its own model.
      'per_task_bound': ([float(x) for x in np.diag(acc)]
                         if getattr(exp.method, 'per_task_bound', False)
                         else None),
      'method_info': meta.get('method_info', {}),
      'config': exp.config.to_dict(),
      'versions': _versions(),
      'devices': {'count': jax.device_count(),
                  'processes': jax.process_count(),
                  'platform': jax.devices()[0].platform},
      'wall_time_s': wall_time,
  })
