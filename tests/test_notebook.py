"""notebooks/inspect_run.ipynb and inspect_retrieval.ipynb: committed clean
and Colab-ready, and run headless against fresh small runs."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'notebooks' / 'inspect_run.ipynb'
RETRIEVAL_NOTEBOOK = REPO / 'notebooks' / 'inspect_retrieval.ipynb'


def _read(path=NOTEBOOK):
  return nbformat.read(str(path), as_version=4)


@pytest.mark.parametrize('path,workdir', [
    (NOTEBOOK, 'runs/default'), (RETRIEVAL_NOTEBOOK, 'runs/primed')])
def test_notebook_is_committed_clean_and_colab_ready(path, workdir):
  nb = _read(path)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == 'python3'
  assert nb.cells[0].cell_type == 'markdown'
  assert 'Colab' in nb.cells[0].source
  # First code cell: installs the package only when it is not importable.
  install = nb.cells[1].source
  assert "find_spec('mgtil_jax') is None" in install
  assert "'pip', 'install'" in install
  assert "REPO_URL = ''  # @param {type:\"string\"}" in install
  # Then a Colab form field for the workdir.
  assert (f"WORKDIR = '{workdir}'  # @param {{type:\"string\"}}"
          in nb.cells[2].source)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs, 'commit the notebook with outputs cleared'
      assert cell.execution_count is None


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  out = tmp_path_factory.mktemp('run')
  proc = subprocess.run(
      [sys.executable, 'launch.py', '--config',
       'configs/mgtil_synth.py:runlocal', '--workdir', str(out)],
      cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  assert (out / 'results.json').exists()
  return out


@pytest.fixture(scope='module')
def primed_workdir(tmp_path_factory):
  out = tmp_path_factory.mktemp('primed')
  proc = subprocess.run(
      [sys.executable, 'launch.py', '--config',
       'configs/mgtil_synth.py:runlocal,tasks=2,steps=2,method=primed',
       '--workdir',
       str(out)], cwd=REPO, capture_output=True, text=True, timeout=900,
      check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  # Quiet by default: no third-party chatter in the log.
  log = proc.stdout + proc.stderr
  for chatter in ('Building index from', 'Downloading and preparing',
                  'Dataset mgtil'):
    assert chatter not in log
  return out


def _execute(workdir, path=NOTEBOOK) -> nbformat.NotebookNode:
  nb = _read(path)
  client = NotebookClient(nb, kernel_name='python3', timeout=600,
                          resources={'metadata': {'path': str(REPO)}})
  # Raises CellExecutionError on the first failing cell.
  client.execute(env=dict(os.environ, MGTIL_WORKDIR=str(workdir)))
  return nb


def _outputs(nb):
  return [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]


def _text(outputs) -> str:
  parts = []
  for o in outputs:
    if o.output_type == 'stream':
      parts.append(o.text)
    elif 'data' in o:
      parts += [v for k, v in o.data.items() if k.startswith('text/')]
  return '\n'.join(parts)


def _check(nb, workdir):
  outputs = _outputs(nb)
  assert not [o for o in outputs if o.output_type == 'error']
  pngs = [o for o in outputs if 'image/png' in o.get('data', {})]
  # Heatmap, accuracy over time, loss curves, image grid.
  assert len(pngs) >= 4, f'{len(pngs)} figures'
  text = _text(outputs)
  assert 'Transfer' in text and 'Forgetting' in text
  assert str(workdir) in text  # it read MGTIL_WORKDIR, not runs/default
  return text


@pytest.mark.slow
def test_notebook_runs_on_a_finished_run(workdir):
  text = _check(_execute(workdir), workdir)
  assert 'regenerating' not in text  # the run's data cache was used


@pytest.mark.slow
def test_notebook_regenerates_missing_data(workdir, tmp_path):
  # Only results.json: the images come from the config stored in it.
  shutil.copy(workdir / 'results.json', tmp_path / 'results.json')
  text = _check(_execute(tmp_path), tmp_path)
  assert 'regenerating' in text


@pytest.mark.slow
def test_retrieval_notebook_runs_on_a_primed_run(primed_workdir):
  nb = _execute(primed_workdir, RETRIEVAL_NOTEBOOK)
  outputs = _outputs(nb)
  assert not [o for o in outputs if o.output_type == 'error']
  pngs = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(pngs) >= 3, f'{len(pngs)} figures'  # 2 pair grids + composition
  text = _text(outputs)
  assert str(primed_workdir) in text and 'traces  : 2 task(s)' in text
  for level in ('task level', 'domain level', 'general level'):
    assert level in text
  assert 'recall' in text
  # The queries the trace recorded are listed (an HTML table per level).
  with open(primed_workdir / 'retrieval' / 'trace' / 'task-1.json') as f:
    first = json.load(f)['queries'][0]['text']
  assert first.replace('&', '&amp;') in text


@pytest.mark.slow
def test_retrieval_notebook_without_traces(workdir):
  # A run without retrieval: the notebook says so instead of failing.
  text = _text(_outputs(_execute(workdir, RETRIEVAL_NOTEBOOK)))
  assert 'No retrieval trace' in text
