"""notebooks/inspect_run.ipynb runs headless against a fresh small run."""

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


def _read():
  return nbformat.read(str(NOTEBOOK), as_version=4)


def test_notebook_is_committed_clean():
  nb = _read()
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == 'python3'
  assert nb.cells[0].cell_type == 'markdown'
  assert 'pip install -e .' in nb.cells[0].source
  assert "WORKDIR = 'runs/default'" in nb.cells[1].source
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


def _execute(workdir) -> nbformat.NotebookNode:
  nb = _read()
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
