"""The package's layers (docs/architecture.md), read from its own imports
with `ast`, lazy imports inside functions included: no import cycle, and no
module imports from a layer above its own. Nothing is imported or run."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'mgtil_jax')

# Bottom up; a module may import from its own layer or a lower one.
LAYERS = (
    ('foundations', ('mgtil_jax', 'mgtil_jax.core')),
    ('building blocks', ('mgtil_jax.criteria', 'mgtil_jax.models',
                         'mgtil_jax.data')),
    ('retrieval', ('mgtil_jax.retrieval',)),
    ('methods', ('mgtil_jax.methods',)),
    ('reporting', ('mgtil_jax.reporting',)),
    ('training', ('mgtil_jax.training',)),
    ('entry points', ('mgtil_jax.entry', 'mgtil_jax.api')),
)
MAX_TRAINING_LINES = 300


def modules() -> dict:
  """{dotted name: path} of every module of the package."""
  out = {}
  for d, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith('.py'):
        path = os.path.join(d, f)
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        out[name.removesuffix('.__init__')] = path
  return out


def imports(name: str, path: str, mods) -> dict:
  """{imported module: {names}} of one module: `import a.b`, `from a
  import b` (b a module or a name of a) and relative imports."""
  package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
  found = {}

  def add(target, what):
    while target and target not in mods:
      target = target.rpartition('.')[0]
    if target and target != name:
      found.setdefault(target, set()).add(what)

  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        add(a.name, a.name)
    elif isinstance(node, ast.ImportFrom):
      src = node.module or ''
      if node.level:
        parts = package.split('.')
        src = '.'.join(parts[:len(parts) - node.level + 1] +
                       ([node.module] if node.module else []))
      for a in node.names:
        sub = f'{src}.{a.name}'
        add(sub if sub in mods else src, a.name)
  return found


def layer(name: str) -> int:
  best, level = -1, None
  for i, (_, prefixes) in enumerate(LAYERS):
    for p in prefixes:
      if (name == p or name.startswith(p + '.')) and len(p) > best:
        best, level = len(p), i
  if level is None:
    raise AssertionError(f'{name} belongs to no layer: add it to LAYERS '
                         '(tests/test_layers.py) and docs/architecture.md')
  return level


@pytest.fixture(scope='module')
def graph():
  mods = modules()
  return {n: imports(n, p, mods) for n, p in mods.items()}


def cycles(graph) -> list[list[str]]:
  """Strongly connected components of two or more modules (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph.get(v, {}):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycle(graph):
  found = cycles(graph)
  lines = []
  for comp in found:
    for a in comp:
      for b in sorted(set(graph[a]) & set(comp)):
        lines.append(f'{a} imports {", ".join(sorted(graph[a][b]))} from {b}')
  assert not found, 'import cycles:\n' + '\n'.join(lines)


def test_no_import_goes_up_a_layer(graph):
  bad = [f'{a} ({LAYERS[layer(a)][0]}) imports '
         f'{", ".join(sorted(names))} from {b} ({LAYERS[layer(b)][0]})'
         for a, targets in sorted(graph.items())
         for b, names in sorted(targets.items()) if layer(b) > layer(a)]
  assert not bad, 'upward imports:\n' + '\n'.join(bad)


def test_the_checks_can_fail():
  # A cycle and an upward import, made up: the two checks above see them.
  fake = {'mgtil_jax.core.a': {'mgtil_jax.core.b': {'x'}},
          'mgtil_jax.core.b': {'mgtil_jax.core.a': {'y'}}}
  assert cycles(fake) == [['mgtil_jax.core.a', 'mgtil_jax.core.b']]
  assert layer('mgtil_jax.training.loop') > layer('mgtil_jax.methods.base')
  assert layer('mgtil_jax.retrieval.checks') == 2
  tree = {'mgtil_jax.core.x': '', 'mgtil_jax.training': ''}
  path = os.path.join(PACKAGE, 'core', 'logs.py')
  assert imports('mgtil_jax.core.logs', path, tree) == {}


def test_top_level_holds_only_folders_init_and_api():
  loose = sorted(f for f in os.listdir(PACKAGE) if f.endswith('.py')
                 and f not in ('__init__.py', 'api.py'))
  assert not loose, f'modules outside a layer folder: {loose}'


def test_training_modules_are_small():
  folder = os.path.join(PACKAGE, 'training')
  sizes = {f: sum(1 for _ in open(os.path.join(folder, f), encoding='utf-8'))
           for f in os.listdir(folder) if f.endswith('.py')}
  big = {f: n for f, n in sizes.items() if n > MAX_TRAINING_LINES}
  assert not big, f'training modules over {MAX_TRAINING_LINES} lines: {big}'
