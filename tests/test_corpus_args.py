"""corpus= / pool= from the command line (issue 12): a corpus path in each
documented layout (files made here in their real formats), the VQA-RAD and
real_mini readers (real_mini on ../shared/data, checked against the task
readers' evaluation splits read independently from the split files), the
packaged question pool, and the fail-fast checks in validation."""

import io
import json
import os
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from mgtil_jax.core import errors
from mgtil_jax.entry import validation
from mgtil_jax.retrieval import corpus as corpus_lib
from mgtil_jax.retrieval import queries

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, '..', 'shared', 'data')
sys.path.insert(0, ROOT)


def _png(seed, size=16):
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(seed).integers(
      0, 255, (size, size, 3), np.uint8)).save(buf, format='PNG')
  return buf.getvalue()


def _entries(specs):
  return [e for e in corpus_lib.read_sources(specs)
          if isinstance(e, corpus_lib.Entry)]


@pytest.fixture
def layouts(tmp_path):
  """A folder with one JSONL, one CSV, one Parquet and one webdataset tar."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  d = tmp_path / 'corpus'
  (d / 'img').mkdir(parents=True)
  for i in range(4):
    (d / 'img' / f'{i}.png').write_bytes(_png(i))
  (d / 'a.jsonl').write_text(
      json.dumps({'image': 'img/0.png', 'caption': 'jsonl chest x-ray'}) +
      '\n' + json.dumps({'image': 'img/1.png', 'caption': 'jsonl fundus'}) +
      '\n')
  (d / 'b.csv').write_text('image,caption\nimg/2.png,csv ultrasound\n')
  pq.write_table(pa.table({'image': [_png(10)], 'caption':
                           ['parquet histology']}), str(d / 'c.parquet'))
  with tarfile.open(str(d / 'd.tar'), 'w') as tar:
    for name, data in (('k0.png', _png(20)), ('k0.txt', b'tar dermoscopy')):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return d


def test_a_folder_reads_every_layout_inside(layouts):
  specs = corpus_lib.specs_from_path(str(layouts))
  assert sorted(s['kind'] for s in specs) == ['parquet', 'table', 'table',
                                               'webdataset']
  got = sorted(e.caption for e in _entries([{'kind': 'path',
                                              'paths': str(layouts)}]))
  assert got == ['csv ultrasound', 'jsonl chest x-ray', 'jsonl fundus',
                 'parquet histology', 'tar dermoscopy']
  # Table images resolve against the table's folder: the bytes on disk.
  e = _entries(corpus_lib.specs_from_path(str(layouts / 'a.jsonl')))[0]
  assert e.image == (layouts / 'img' / '0.png').read_bytes()


def test_files_globs_and_plus(layouts):
  one = corpus_lib.specs_from_path(str(layouts / 'c.parquet'))
  assert [s['kind'] for s in one] == ['parquet']
  both = corpus_lib.specs_from_path(f'{layouts}/b.csv+{layouts}/d.tar')
  assert [s['kind'] for s in both] == ['table', 'webdataset']
  assert len(corpus_lib.specs_from_path(str(layouts / '*.jsonl'))) == 1


def test_bad_corpus_paths_name_the_argument(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'^corpus: .*does not exist'):
    corpus_lib.specs_from_path(str(tmp_path / 'none.jsonl'))
  (tmp_path / 'x.txt').write_text('hi')
  with pytest.raises(ValueError, match=r'^corpus: .*not a corpus file'):
    corpus_lib.specs_from_path(str(tmp_path / 'x.txt'))
  with pytest.raises(ValueError, match=r'^corpus: .*holds no corpus file'):
    corpus_lib.specs_from_path(str(tmp_path))


def _vqa_rad(root):
  (root / 'images').mkdir(parents=True)
  for i, name in enumerate(('synpic100.jpg', 'synpic200.jpg')):
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(buf, 'JPEG')
    (root / 'images' / name).write_bytes(buf.getvalue())
  (root / 'trainset.json').write_text(json.dumps([
      {'image_name': 'synpic100.jpg', 'image_organ': 'CHEST',
       'question': 'Is there a  pneumothorax?', 'answer': 'No'},
      {'image_name': 'synpic200.jpg', 'image_organ': 'ABD',
       'question': 'Is the liver enlarged?', 'answer': 'yes'}]))
  (root / 'testset.json').write_text(json.dumps([
      {'image_name': 'synpic100.jpg', 'image_organ': 'CHEST',
       'question': 'Where is the tube?', 'answer': 'trachea'}]))


def test_vqa_rad_captions_and_exclusion(tmp_path):
  _vqa_rad(tmp_path / 'vqa')
  assert [s['kind'] for s in corpus_lib.specs_from_path(
      str(tmp_path / 'vqa'))] == ['vqa_rad']
  got = {e.id: e.caption for e in _entries(
      [{'kind': 'vqa_rad', 'paths': str(tmp_path / 'vqa')}])}
  assert got == {
      'vqa_rad-synpic100': 'Radiology image of the chest. Is there a '
                           'pneumothorax? No. Where is the tube? trachea.',
      'vqa_rad-synpic200': 'Radiology image of the abdomen. Is the liver '
                           'enlarged? yes.'}
  # Excluded by MedPix id, whatever the file name around it.
  kept = _entries([{'kind': 'vqa_rad', 'paths': str(tmp_path / 'vqa'),
                    'exclude': ['MPX9_synpic100']}])
  assert [e.id for e in kept] == ['vqa_rad-synpic200']


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, 'medpix2')),
                    reason='needs ../shared/data')
def test_real_mini_corpus_holds_no_evaluation_image():
  medpix = os.path.join(SHARED, 'medpix2')
  vqa = os.path.join(SHARED, 'vqa_rad')
  items = list(corpus_lib.read_real_mini({'medpix': medpix, 'vqa_rad': vqa}))
  entries = [e for e in items if isinstance(e, corpus_lib.Entry)]
  ids = {corpus_lib.synpic_id(e.id) for e in entries}
  # Independently of the readers: MedPix's test split from its file, and
  # VQA-RAD's test images as the task splits them (the task's own reader).
  from mgtil_jax.data.sources import vqa_rad
  with open(os.path.join(medpix, 'splitted_dataset',
                         'descriptions_test.jsonl')) as f:
    medpix_test = {json.loads(l)['image'].split('_')[1] for l in f
                   if l.strip()}
  vqa_test = {k.split('.')[0] for k in (e.key for e in vqa_rad.read(vqa)
                                        ['test'])}
  assert len(medpix_test) == 200 and len(vqa_test) > 50
  assert not ids & (medpix_test | vqa_test)
  # Everything else with an image is there: the MedPix dev images and the
  # VQA-RAD training images, less the images shared with the other's test.
  with open(os.path.join(medpix, 'splitted_dataset',
                         'descriptions_dev.jsonl')) as f:
    dev = {json.loads(l)['image'].split('_')[1] for l in f if l.strip()}
  by_source = {}
  for e in entries:
    by_source.setdefault(e.source, set()).add(corpus_lib.synpic_id(e.id))
  assert by_source['medpix2'] == dev - vqa_test
  assert len(by_source['vqa_rad']) == 234
  assert all(e.caption.startswith('Radiology image of the') for e in entries
             if e.source == 'vqa_rad')


def test_default_pool_is_packaged_and_well_formed():
  assert os.path.isfile(queries.DEFAULT_POOL)
  assert queries.DEFAULT_POOL.startswith(os.path.dirname(queries.__file__))
  template = 'A {modality} photo of {finding}.'
  pool = queries.default_pool(template)
  assert 200 <= len(pool) <= 600
  assert len({q.text for q in pool}) == len(pool)
  domains = {q.domain for q in pool}
  assert {'xray', 'ct', 'mri', 'ultrasound', 'fundus', 'oct', 'pathology',
          'microscopy', 'dermoscopy', 'endoscopy'} <= domains
  assert all(q.site and q.finding for q in pool)
  with open(queries.DEFAULT_POOL) as f:
    raw = json.load(f)['domains']
  for q in pool:  # the paper's form with the domain's first modality phrase
    assert q.text == template.format(modality=raw[q.domain]['modality'][0],
                                     finding=q.finding)
  # The modality phrases describe the domains for zero-shot classification.
  assert queries.default_descriptions(['ct'])['ct'][0] == \
      'computed tomography'


def test_user_pools_csv_rows_and_nested(tmp_path):
  template = 'A {modality} photo of {finding}.'
  (tmp_path / 'p.csv').write_text(
      'domain,site,finding,modality\nxray,lung,effusion,chest film\n'
      'ct,head,bleed,\n')
  got = queries.load_pool(str(tmp_path / 'p.csv'), template,
                          {'ct': ('head ct',)})
  assert [q.text for q in got] == ['A chest film photo of effusion.',
                                   'A head ct photo of bleed.']
  assert queries.pool_descriptions(str(tmp_path / 'p.csv')) == {}
  (tmp_path / 'n.json').write_text(json.dumps({'domains': {'us': {
      'modality': ['sonogram', 'ultrasound'], 'sites': {'neck': ['goitre']}}}}))
  got = queries.load_pool(str(tmp_path / 'n.json'), template)
  assert [(q.text, q.domain, q.site) for q in got] == [
      ('A sonogram photo of goitre.', 'us', 'neck')]
  assert queries.pool_descriptions(str(tmp_path / 'n.json')) == {
      'us': ('sonogram', 'ultrasound')}
  (tmp_path / 'bad.json').write_text('{"domains": {"us": ["x"]}}')
  with pytest.raises(ValueError, match='needs a "sites" object'):
    queries.load_pool(str(tmp_path / 'bad.json'), template)


def test_configs_take_corpus_and_pool(tmp_path, monkeypatch):
  from configs import hieramed, medmnist, real_mini
  c = real_mini.get_config('')
  (spec,) = c.retrieval.corpus.sources
  assert spec['kind'] == 'real_mini'
  assert spec['medpix'].endswith('medpix2')
  monkeypatch.setenv('MGTIL_DATA', str(tmp_path))
  c = real_mini.get_config('corpus=x.jsonl,pool=p.json')
  assert c.data.root == str(tmp_path)
  assert c.retrieval.corpus.sources[0]['kind'] == 'path'
  assert c.retrieval.pool == os.path.abspath('p.json')
  for module in (hieramed, medmnist):
    c = module.get_config(f'root={tmp_path},corpus={tmp_path}')
    assert c.retrieval.corpus.sources[0]['paths'] == str(tmp_path)


def test_a_quoted_corpus_path_may_hold_commas(tmp_path):
  # Issue 25: `,` separates config arguments; a quoted value keeps its own.
  from configs import medmnist
  folder = tmp_path / 'pmc,2024'
  folder.mkdir()
  (folder / 'c.jsonl').write_text('{"image": "a.png", "caption": "x"}\n')
  c = medmnist.get_config(
      f"root={tmp_path},flags=breastmnist,corpus='{folder}',method=zscl")
  assert c.retrieval.corpus.sources[0]['paths'] == str(folder)
  assert c.method == 'zscl'  # the arguments after the quoted one still parse
  with pytest.raises(ValueError, match='unbalanced quote'):
    medmnist.get_config(f"root={tmp_path},corpus='{folder}")


def _config(tmp_path, arg):
  from configs import medmnist
  return medmnist.get_config(f'root={tmp_path},flags=breastmnist,{arg}')


@pytest.mark.parametrize('method', ['zscl', 'primed', 'primed_uni', 'gift',
                                    'snd'])
def test_a_method_needing_a_corpus_fails_in_validation(tmp_path, method):
  with pytest.raises(errors.UserError, match='give corpus=<folder or file>'):
    validation.validate(_config(tmp_path, f'method={method}'))


def test_validation_passes_or_names_the_argument(tmp_path, layouts):
  validation.validate(_config(tmp_path, 'method=ft'))
  validation.validate(_config(tmp_path, f'method=zscl,corpus={layouts}'))
  c = _config(tmp_path, 'method=gift')
  c.method_kwargs.gift_pairs = str(tmp_path)  # generated pairs: no corpus
  validation.validate(c)
  cases = [('method=zscl,corpus=/nonexistent/c.jsonl', errors.UserFileError,
            '^corpus: /nonexistent/c.jsonl does not exist'),
           ('pool=/nonexistent/p.json', errors.UserFileError,
            '^pool: /nonexistent/p.json not found')]
  for arg, kind, match in cases:
    with pytest.raises(kind, match=match):
      validation.validate(_config(tmp_path, arg))
  c = _config(tmp_path, f'method=primed,corpus={layouts}')
  c.retrieval.text_encoder = 'precomputed'
  with pytest.raises(errors.UserFileError,
                     match='^config.retrieval.precomputed.caption_vectors'):
    validation.validate(c)
  c = _config(tmp_path, f'method=primed,corpus={layouts}')
  c.retrieval.k_v = 0
  with pytest.raises(errors.UserError, match='^config.retrieval.k_v'):
    validation.validate(c)
  c = _config(tmp_path, 'method=ft')
  c.tokenizer.vocab_file = '/nonexistent/vocab.txt'
  with pytest.raises(errors.UserFileError, match='^config.tokenizer.vocab'):
    validation.validate(c)
  from configs import medmnist
  with pytest.raises(errors.UserFileError, match='^root: the data folder'):
    validation.validate(medmnist.get_config('root=/nonexistent/mm'))


def test_command_line_refuses_in_seconds_with_one_line(tmp_path, capsys):
  import launch
  start = time.monotonic()
  code = launch.main_cli([
      'launch.py', f'--config={ROOT}/configs/medmnist.py:root={tmp_path},'
      'method=zscl', f'--workdir={tmp_path / "run"}'])
  took = time.monotonic() - start
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err
  assert 'corpus=' in err[0] and "method 'zscl'" in err[0]
  assert took < 30, took  # validation only: no data build, no pretraining
  assert not os.path.exists(tmp_path / 'run' / 'data')


def test_zscl_reference_set_is_a_seeded_subset_without_eval_copies(
    tmp_path, layouts):
  """corpus_reference_set: reference_size image entries of the corpus,
  the same for the same seed, none a copy of an evaluation image."""
  import types
  from configs import medmnist
  from mgtil_jax import retrieval
  c = medmnist.get_config(f'root={tmp_path},method=zscl,corpus={layouts}')
  c.retrieval.reference_size = 3
  # One corpus image is also a test image of the task: it must be dropped.
  leaked = np.asarray(Image.open(layouts / 'img' / '0.png').convert('RGB'))
  task = types.SimpleNamespace(name='t', test_images=leaked[None])

  def make(seed, workdir):
    c.seed = seed
    exp = types.SimpleNamespace(
        config=c, tasks=[task], workdir=str(workdir),
        model=types.SimpleNamespace(cfg=types.SimpleNamespace(
            vision=types.SimpleNamespace(image_size=16))),
        tokenizer=lambda texts: np.asarray([[len(t), 1] for t in texts],
                                           np.int32))
    return retrieval.corpus_reference_set(exp, batch_size=2)

  c.retrieval.reference_size = 10
  everything = make(0, tmp_path / 'w')
  # 5 image entries, 1 dropped as leaked: the other 4.
  assert everything.images.shape == (4, 16, 16, 3)
  assert not any((img == leaked).all() for img in everything.images)
  c.retrieval.reference_size = 3
  a = make(0, tmp_path / 'w')
  assert len(a) == 3
  b = make(0, tmp_path / 'w2')
  assert (a.images == b.images).all() and (a.tokens == b.tokens).all()
  picks = {make(s, tmp_path / 'w').tokens[:, 0].tobytes() for s in range(6)}
  assert len(picks) > 1  # the seed picks the subset
