"""Draws docs/architecture.png: the package's layers bottom up, the modules
of each, and how many imports go from each layer to each lower one, read
from the code itself (tests/test_layers.py's reader and LAYERS).

  python tools/architecture_diagram.py [out.png]
"""

import collections
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))

import test_layers  # pylint: disable=g-import-not-at-top,wrong-import-position


def layer_contents():
  mods = test_layers.modules()
  graph = {n: test_layers.imports(n, p, mods) for n, p in mods.items()}
  members = collections.defaultdict(set)
  for name in mods:
    parts = name.split('.')
    shown = '.'.join(parts[1:3]) if len(parts) > 2 else '.'.join(parts[1:])
    if shown.startswith('data.sources'):
      shown = 'data.sources.*'
    members[test_layers.layer(name)].add(shown or '__init__')
  counts = collections.Counter(
      (test_layers.layer(a), b) for a, targets in graph.items()
      for b in targets if test_layers.layer(a) != test_layers.layer(b))
  counts = collections.Counter(a for a, _ in counts)
  return members, counts


def draw(path):
  # pylint: disable=g-import-not-at-top
  from matplotlib import patches
  from matplotlib.figure import Figure
  members, counts = layer_contents()
  n = len(test_layers.LAYERS)
  fig = Figure(figsize=(11, 1.15 * n + 0.6))
  ax = fig.add_axes([0, 0, 1, 1])
  ax.set_xlim(0, 11)
  ax.set_ylim(-0.2, 1.15 * n + 0.4)
  ax.axis('off')
  colours = ('#deebf7', '#c6dbef', '#fee6ce', '#fdd0a2', '#e5f5e0',
             '#c7e9c0', '#f2f0f7')
  for i, (label, _) in enumerate(test_layers.LAYERS):
    y = 1.15 * i
    ax.add_patch(patches.FancyBboxPatch(
        (0.2, y), 8.0, 0.95, boxstyle='round,pad=0.02',
        fc=colours[i % len(colours)], ec='#555555'))
    ax.text(0.35, y + 0.72, f'{i}  {label}', fontsize=11, weight='bold',
            va='center')
    names = sorted(members[i])
    text, line = [], ''
    for m in names:
      if len(line) + len(m) > 95:
        text.append(line)
        line = ''
      line += (', ' if line else '') + m
    text.append(line)
    ax.text(0.35, y + 0.32, '\n'.join(text), fontsize=7.5, va='center',
            family='monospace')
    down = counts.get(i, 0)
    ax.text(8.45, y + 0.47, f'imports {down} modules\nof lower layers'
            if down else 'imports nothing\nof the package', fontsize=8,
            va='center')
  ax.text(0.2, 1.15 * n + 0.15, 'mgtil_jax layers (bottom up): a module '
          'imports only from its own layer or a lower one '
          '(tests/test_layers.py)', fontsize=10)
  fig.savefig(path, dpi=110)
  return path


if __name__ == '__main__':
  print(draw(sys.argv[1] if len(sys.argv) > 1
             else os.path.join(ROOT, 'docs', 'architecture.png')))
