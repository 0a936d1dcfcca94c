"""Small results.json / comparison.json dictionaries for the report tests,
shaped as training.results.build_results and entry.compare.compare write them."""

import numpy as np

LONG_NAMES = ('xray_lesion', 'organamnist_abdominal_ct', 'pneumoniamnist')


def results(names=LONG_NAMES, terms=True, method='primed', seed=0):
  rng = np.random.default_rng(seed)
  n = len(names)
  acc = rng.uniform(0.2, 0.9, (n, n)).round(4)
  curves = []
  for name in names:
    steps = range(1, 11)
    curve = {'task': name, 'loss': [[s, 3.0 / s + 0.5] for s in steps]}
    if terms:
      curve['terms'] = {'ce': [[s, 2.0 / s + 0.3] for s in steps],
                        'ckt': [[s, 0.5 / s] for s in steps],
                        'dfg': [[s, 1e-3 * s] for s in steps]}
    curves.append(curve)
  return {
      'method': method, 'benchmark': 'mgtil_synth',
      'tasks': [{'name': name, 'domain': 'xray', 'class_names': ['a', 'b'],
                 'num_train': 10, 'num_test': 4, 'chance': 0.5}
                for name in names],
      'accuracy_matrix': acc.tolist(), 'auc_matrix': acc.tolist(),
      'zero_shot': rng.uniform(0.2, 0.5, n).round(4).tolist(),
      'zero_shot_auc': [0.5] * n,
      'summary': {'transfer': 0.41, 'avg': 0.55, 'last': 0.62, 'bwt': -0.143,
                  'forgetting': 0.15, 'acc': 0.62, 'auc': 0.7,
                  'zero_shot_mean': 0.33},
      'train_curves': curves, 'config': {'method': method},
      'wall_time_s': 12.0,
      'devices': {'count': 1, 'processes': 1, 'platform': 'cpu'}}


def comparison(methods=('ft', 'primed', 'joint'), spread=None):
  """spread: None, 'std' (row['summary_std']) or 'ci' (row['ci'] bounds)."""
  table = {'benchmark': 'mgtil_synth', 'tasks': list(LONG_NAMES),
           'methods': {}}
  for i, m in enumerate(methods):
    s = {'transfer': 0.3 + 0.1 * i, 'avg': 0.4, 'last': 0.5 + 0.05 * i,
         'bwt': -0.1 + 0.04 * i, 'acc': 0.5, 'auc': 0.6}
    if m == 'joint':
      s['transfer'] = s['bwt'] = None
    row = {'summary': s, 'wall_time_s': 3.0, 'last_row': [0.5, 0.6, 0.7]}
    if spread == 'std':
      row['summary_std'] = {k: 0.02 for k in s}
    elif spread == 'ci':
      row['ci'] = {k: [v - 0.03, v + 0.01] for k, v in s.items()
                   if v is not None}
    table['methods'][m] = row
  return table
