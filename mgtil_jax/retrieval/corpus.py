"""The retrieval corpus: one entry schema, readers of the usual distribution
formats, and a tensorflow-datasets (array_record) store with random access.

Entry schema: `id` (unique string), `image` (encoded image bytes as
distributed; b'' for a text-only entry), `caption`, `source`, and optional
`modality` / `domain` tags.

Ingestion (`ingest`) streams entries from any readers, decodes every image
once (corrupt ones are counted and skipped), drops duplicates (same id, or
same image bytes and caption), and writes array_record shards in the
tensorflow-datasets layout (`tfds.builder_from_directory(dir)` opens it)
plus small memory-mapped side columns (captions, ids, has_image, caption
groups) that retrieval reads without touching the image records. The
manifest holds a snapshot id: a hash over every written entry, which the
embeddings and indices built from the corpus record and check.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
from concurrent import futures
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from mgtil_jax.core import errors

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DATASET_NAME = 'mgtil_corpus'
MANIFEST = 'corpus_manifest.json'
REPORT = 'ingest_report.json'
IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp', 'bmp', 'gif', 'tif', 'tiff')


@dataclasses.dataclass(frozen=True)
class Entry:
  id: str
  image: bytes   # encoded image; b'' = text-only entry
  caption: str
  source: str
  modality: str = ''
  domain: str = ''


@dataclasses.dataclass(frozen=True)
class Skip:
  """A row a reader could not turn into an entry (counted, never fatal)."""
  reason: str   # e.g. 'missing_image', 'missing_caption', 'bad_row'
  where: str    # file:row or id, for the report


def normalize_caption(text: str) -> str:
  """Whitespace-collapsed, lower-cased caption: the key of 'same caption'."""
  return ' '.join(text.lower().split())


def caption_group(text: str) -> np.uint64:
  digest = hashlib.blake2b(normalize_caption(text).encode(), digest_size=8)
  return np.frombuffer(digest.digest(), np.uint64)[0]


# ------------------------------------------------------------ image codec --


def decode_image(data: bytes, size: int | None = None) -> np.ndarray:
  """Encoded bytes -> uint8[H, W, 3]; with `size`, the short side is resized
  to `size` (bicubic) and the centre cropped to [size, size, 3] (CLIP's
  preprocessing). Images already of that size are returned untouched."""
  with Image.open(io.BytesIO(data)) as img:
    img = img.convert('RGB')
    if size is not None and img.size != (size, size):
      w, h = img.size
      scale = size / min(w, h)
      nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
      img = img.resize((nw, nh), Image.BICUBIC)
      left, top = (nw - size) // 2, (nh - size) // 2
      img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, np.uint8)


def encode_png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format='PNG')
  return buf.getvalue()


def decode_many(blobs, size: int, threads: int = 4) -> np.ndarray:
  """Decodes a list of encoded images to uint8[N, size, size, 3] on a thread
  pool (PIL releases the GIL while decoding and resizing)."""
  out = np.zeros((len(blobs), size, size, 3), np.uint8)
  if not len(blobs):
    return out

  def one(i):
    out[i] = decode_image(blobs[i], size)

  if threads <= 1 or len(blobs) < 8:
    for i in range(len(blobs)):
      one(i)
  else:
    with futures.ThreadPoolExecutor(threads) as pool:
      list(pool.map(one, range(len(blobs))))
  return out


# ---------------------------------------------------------------- readers --
# Each reader takes one source spec (a dict from config.retrieval.corpus.
# sources) and yields Entry or Skip. Bad *files* or a missing *column* are
# errors naming the file and field; bad *rows* are Skips.

DEFAULT_FIELDS = dict(id='id', image='image', caption='caption',
                      modality='modality', domain='domain')


def _paths(spec: dict, kind: str) -> list[str]:
  paths = spec.get('paths') or ()
  if isinstance(paths, str):
    paths = (paths,)
  out = []
  for p in paths:
    hits = sorted(glob.glob(os.path.expanduser(p)))
    if not hits:
      raise FileNotFoundError(f'retrieval corpus ({kind}): no file matches '
                              f'{p!r}')
    out.extend(hits)
  if not out:
    raise ValueError(f"retrieval corpus ({kind}): the source needs 'paths' "
                     f'(files or globs), got {spec.get("paths")!r}')
  return out


def _fields(spec: dict) -> dict:
  fields = dict(DEFAULT_FIELDS)
  fields.update(dict(spec.get('fields') or {}))
  return fields


def _read_file(path: str) -> bytes | None:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError:
    return None


def _table_rows(path: str):
  """(row number, dict) of a JSONL / JSON-array / CSV / TSV file."""
  try:
    yield from _utf8_table_rows(path)
  except UnicodeDecodeError as e:
    raise errors.not_utf8(path, e) from None


def _utf8_table_rows(path: str):
  lower = path.lower()
  if lower.endswith(('.csv', '.tsv')):
    with open(path, newline='', encoding='utf-8') as f:
      reader = csv.DictReader(f, delimiter='\t' if lower.endswith('.tsv')
                              else ',')
      if reader.fieldnames is None:
        raise ValueError(f'{path}: empty CSV file (expected a header row)')
      for i, row in enumerate(reader):
        yield i + 2, row  # 1-based, after the header
    return
  if lower.endswith('.json'):
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
    if not isinstance(data, list):
      raise ValueError(f'{path}: expected a JSON array of objects')
    yield from ((i, r) for i, r in enumerate(data))
    return
  with open(path, encoding='utf-8') as f:
    for i, line in enumerate(f):
      if not line.strip():
        continue
      try:
        yield i + 1, json.loads(line)
      except json.JSONDecodeError:
        yield i + 1, None


def read_table(spec: dict) -> Iterator[Entry | Skip]:
  """JSONL, JSON or CSV/TSV rows + an image folder (`image_dir`); the image
  field is a path relative to it (or absolute)."""
  fields = _fields(spec)
  image_dir = spec.get('image_dir', '')
  source = spec.get('source', 'table')
  for path in _paths(spec, 'table'):
    checked = False
    for row_no, row in _table_rows(path):
      where = f'{path}:{row_no}'
      if not isinstance(row, dict):
        yield Skip('bad_row', where)
        continue
      if not checked:
        missing = [fields[k] for k in ('image', 'caption')
                   if fields[k] not in row]
        if missing:
          raise ValueError(f'{path}: rows lack the field(s) {missing}; '
                           f'found {sorted(row)}. Map the names with the '
                           "source's 'fields' (e.g. {'caption': 'text'})")
        checked = True
      caption = row.get(fields['caption'])
      if not caption or not str(caption).strip():
        yield Skip('missing_caption', where)
        continue
      rel = row.get(fields['image']) or ''
      image = b''
      if rel:
        image = _read_file(os.path.join(image_dir, str(rel)))
        if image is None:
          yield Skip('missing_image', where)
          continue
      yield Entry(id=str(row.get(fields['id']) or rel or where),
                  image=image, caption=str(caption), source=source,
                  modality=str(row.get(fields['modality']) or ''),
                  domain=str(row.get(fields['domain']) or ''))


def _image_bytes(value) -> bytes | None:
  """Parquet image cell: raw bytes, or a struct {'bytes', 'path'} as
  Hugging Face datasets (PMC-15M / BIOMEDICA exports) write it."""
  if value is None:
    return None
  if isinstance(value, (bytes, bytearray, memoryview)):
    return bytes(value)
  if isinstance(value, dict):
    data = value.get('bytes')
    if data:
      return bytes(data)
    path = value.get('path')
    return _read_file(path) if path else None
  return None


def read_parquet(spec: dict) -> Iterator[Entry | Skip]:
  """Parquet files with an image-bytes column (binary or {'bytes','path'}
  struct) and a caption column; read in row batches (streaming)."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  fields = _fields(spec)
  source = spec.get('source', 'parquet')
  for path in _paths(spec, 'parquet'):
    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    missing = [fields[k] for k in ('image', 'caption') if fields[k] not in
               names]
    if missing:
      raise ValueError(f'{path}: Parquet columns {missing} not found; the '
                       f'file has {sorted(names)}. Map the names with the '
                       "source's 'fields' (e.g. {'image': 'jpg'})")
    cols = [fields[k] for k in DEFAULT_FIELDS if fields[k] in names]
    row_no = 0
    for batch in pf.iter_batches(batch_size=1024, columns=cols):
      data = batch.to_pydict()
      for i in range(batch.num_rows):
        where = f'{path}:{row_no}'
        row_no += 1
        get = lambda k: data[fields[k]][i] if fields[k] in data else None
        caption = get('caption')
        if not caption or not str(caption).strip():
          yield Skip('missing_caption', where)
          continue
        image = _image_bytes(get('image'))
        if image is None:
          yield Skip('missing_image', where)
          continue
        yield Entry(id=str(get('id') or where), image=image,
                    caption=str(caption), source=source,
                    modality=str(get('modality') or ''),
                    domain=str(get('domain') or ''))


def read_webdataset(spec: dict) -> Iterator[Entry | Skip]:
  """webdataset tar shards: files grouped by key (the name up to the first
  dot of the basename); an image (jpg/png/...) and a caption in `.txt`,
  `.caption` or a `.json` with a 'caption' field (plus optional
  'modality' / 'domain')."""
  source = spec.get('source', 'webdataset')
  caption_key = _fields(spec)['caption']

  def flush(key, parts, tar_path):
    where = f'{tar_path}:{key}'
    meta = {}
    if 'json' in parts:
      try:
        meta = json.loads(parts['json'].decode('utf-8'))
      except (UnicodeDecodeError, json.JSONDecodeError):
        return Skip('bad_row', where)
    caption = None
    for ext in ('txt', 'caption'):
      if ext in parts:
        caption = parts[ext].decode('utf-8', errors='replace')
        break
    if caption is None:
      caption = meta.get(caption_key) if isinstance(meta, dict) else None
    if not caption or not str(caption).strip():
      return Skip('missing_caption', where)
    image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
    if image is None:
      return Skip('missing_image', where)
    meta = meta if isinstance(meta, dict) else {}
    return Entry(id=str(meta.get('id') or key), image=image,
                 caption=str(caption).strip(), source=source,
                 modality=str(meta.get('modality') or ''),
                 domain=str(meta.get('domain') or ''))

  for tar_path in _paths(spec, 'webdataset'):
    try:
      tar = tarfile.open(tar_path, 'r|*')  # streaming: shards can be huge
    except tarfile.TarError as e:
      raise ValueError(f'{tar_path}: not a readable tar shard ({e})') from e
    key, parts = None, {}
    with tar:
      try:
        for member in tar:
          if not member.isfile():
            continue
          base = os.path.basename(member.name)
          dirname = os.path.dirname(member.name)
          stem, _, ext = base.partition('.')
          this_key = os.path.join(dirname, stem)
          if this_key != key and key is not None:
            yield flush(key, parts, tar_path)
            parts = {}
          key = this_key
          parts[ext.lower()] = tar.extractfile(member).read()
      except (tarfile.TarError, OSError) as e:  # truncated shard
        yield Skip('truncated_shard', f'{tar_path}: {e}')
      else:
        # tarfile ends quietly at a cut header: a whole shard ends with a
        # zero block, the one header read past its last member.
        if tar.fileobj.tell() - tar.offset < tarfile.BLOCKSIZE:
          yield Skip('truncated_shard', f'{tar_path}: ends inside a member '
                     'header or without the end-of-archive blocks')
    if key is not None and parts:
      yield flush(key, parts, tar_path)


def read_synth(spec: dict) -> Iterator[Entry | Skip]:
  """The embedded benchmark's 'literature' (the pretraining corpus)."""
  from mgtil_jax.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  images, captions = tasks_lib.synth_corpus(spec['data_cfg'],
                                            spec['per_class'],
                                            spec.get('cache_dir'))
  for i, (image, caption) in enumerate(zip(images, captions)):
    yield Entry(id=f'synth-{i:07d}', image=encode_png(image), caption=caption,
                source='mgtil_synth')


def synpic_id(name: str) -> str:
  """The MedPix image id ('synpic12345') inside a file or record name
  ('MPX1007_synpic46719', 'synpic46719.jpg'); '' when there is none. VQA-RAD
  and MedPix 2.0 both draw on MedPix, so this is how one image is recognised
  in both."""
  match = re.search(r'synpic\d+', str(name))
  return match.group(0) if match else ''


def _excluded(spec: dict) -> frozenset:
  """spec['exclude']: image names or synpic ids kept out of the corpus
  (the evaluation images of a benchmark)."""
  out = set()
  for name in spec.get('exclude') or ():
    out.add(str(name))
    if synpic_id(name):
      out.add(synpic_id(name))
  return frozenset(out)


def _is_excluded(name: str, exclude: frozenset) -> bool:
  """Whether image `name` is in `exclude` (`_excluded`), by name or by its
  synpic id."""
  return name in exclude or (synpic_id(name) or None) in exclude


def read_medpix(spec: dict) -> Iterator[Entry | Skip]:
  """MedPix 2.0: `Descriptions.json` (per-image records) + `images/<image>.png`.
  Records whose image is not in the folder (e.g. the train split left out)
  are skipped as 'missing_image'; images named in `exclude` (or sharing
  their synpic id) as 'excluded'."""
  exclude = _excluded(spec)
  for root in _paths(spec, 'medpix'):
    desc = os.path.join(root, 'Descriptions.json')
    if not os.path.exists(desc):
      raise FileNotFoundError(f'medpix: {desc} not found (expected the '
                              'MedPix-2.0 layout: Descriptions.json, images/)')
    with open(desc, encoding='utf-8') as f:
      records = json.load(f)
    for i, rec in enumerate(records):
      where = f'{desc}[{i}]'
      try:
        name = rec['image']
        d = rec.get('Description') or {}
        caption = d.get('Caption') or ''
      except (TypeError, KeyError):
        yield Skip('bad_row', where)
        continue
      if not caption.strip():
        yield Skip('missing_caption', where)
        continue
      if _is_excluded(name, exclude):
        yield Skip('excluded', where)
        continue
      image = _read_file(os.path.join(root, 'images', f'{name}.png'))
      if image is None:
        yield Skip('missing_image', where)
        continue
      yield Entry(id=f'medpix-{name}', image=image, caption=caption.strip(),
                  source='medpix2', modality=str(rec.get('Type') or ''),
                  domain='radiology')


def read_roco(spec: dict) -> Iterator[Entry | Skip]:
  """ROCO `captions.txt` (ROCO_ID <TAB> caption) as text-only entries (the
  images live on PMC and are not redistributed)."""
  for root in _paths(spec, 'roco'):
    path = root if os.path.isfile(root) else os.path.join(root, 'captions.txt')
    if not os.path.exists(path):
      raise FileNotFoundError(f'roco: {path} not found (expected captions.txt '
                              'with ROCO_ID<TAB>caption lines)')
    with open(path, encoding='utf-8') as f:
      for i, line in enumerate(f):
        rid, tab, caption = line.rstrip('\n').partition('\t')
        if not tab or not caption.strip():
          yield Skip('missing_caption', f'{path}:{i + 1}')
          continue
        yield Entry(id=rid.strip(), image=b'', caption=caption.strip(),
                    source='roco', modality='radiology', domain='radiology')


VQA_RAD_ORGANS = {'HEAD': 'head', 'CHEST': 'chest', 'ABD': 'abdomen'}


def vqa_rad_caption(organ: str, qa: list[tuple[str, str]],
                    max_questions: int = 4) -> str:
  """A caption for a VQA-RAD image: its organ, then its first question /
  answer pairs (the clinicians' questions name what the image shows), e.g.
  'Radiology image of the head. Are regions of the brain infarcted? Yes.'"""
  parts = [f'Radiology image of the {VQA_RAD_ORGANS.get(organ, organ.lower())}.']
  for question, answer in qa[:max_questions]:
    question = ' '.join(str(question).split())
    answer = ' '.join(str(answer).split())
    parts.append(f'{question} {answer}.' if answer else question)
  return ' '.join(parts)


def read_vqa_rad(spec: dict) -> Iterator[Entry | Skip]:
  """VQA-RAD (`trainset.json`, `testset.json` question records with
  image_name / image_organ / question / answer, `images/`): one entry per
  image, captioned from its organ and questions (`vqa_rad_caption`). Images
  named in `exclude` (or sharing their synpic id) are skipped as
  'excluded'."""
  from mgtil_jax.data.sources import vqa_rad  # pylint: disable=g-import-not-at-top
  exclude = _excluded(spec)
  max_questions = int(spec.get('max_questions', 4))
  for root in _paths(spec, 'vqa_rad'):
    for file in vqa_rad.QUESTION_FILES:
      path = os.path.join(root, file)
      if not os.path.exists(path):
        raise FileNotFoundError(f'vqa_rad: {path} not found (expected the '
                                'VQA-RAD layout: trainset.json, testset.json, '
                                'images/)')
    by_image: dict[str, dict] = {}
    for path, records in vqa_rad.question_records(root):
      for r in records:
        name = r.get('image_name') if isinstance(r, dict) else None
        if not name:
          yield Skip('bad_row', path)
          continue
        item = by_image.setdefault(name, {'organ': '', 'qa': []})
        item['organ'] = item['organ'] or str(r.get('image_organ') or
                                             '').strip()
        item['qa'].append((r.get('question') or '', r.get('answer') or ''))
    for name in sorted(by_image):
      where = f'{root}:{name}'
      item = by_image[name]
      if _is_excluded(name, exclude):
        yield Skip('excluded', where)
        continue
      if not item['organ']:
        yield Skip('missing_caption', where)
        continue
      image = _read_file(os.path.join(root, 'images', name))
      if image is None:
        yield Skip('missing_image', where)
        continue
      yield Entry(id=f'vqa_rad-{os.path.splitext(name)[0]}', image=image,
                  caption=vqa_rad_caption(item['organ'], item['qa'],
                                          max_questions),
                  source='vqa_rad', modality='radiology', domain='radiology')


def real_mini_eval_images(medpix_root: str, vqa_rad_root: str) -> list[str]:
  """The evaluation images of real_mini's two tasks drawn from the corpus's
  own datasets (medpix_ct_mr's test split, vqa_rad_organ's test split), by
  the task readers themselves, so the corpus can never hold them."""
  # pylint: disable=g-import-not-at-top
  from mgtil_jax.data.sources import medpix, vqa_rad
  out = [e.key for e in medpix.read(medpix_root)['test']]
  out += [e.key for e in vqa_rad.read(vqa_rad_root)['test']]
  return sorted(out)


def read_real_mini(spec: dict) -> Iterator[Entry | Skip]:
  """real_mini's corpus: MedPix 2.0 images with their captions and VQA-RAD
  images captioned from organ and questions, minus every evaluation image
  of the benchmark's medpix_ct_mr and vqa_rad_organ tasks (matched by name
  and by synpic id, since 2 MedPix images are also VQA-RAD images).
  spec: {'kind': 'real_mini', 'medpix': <folder>, 'vqa_rad': <folder>}."""
  for key in ('medpix', 'vqa_rad'):
    if not spec.get(key) or not os.path.isdir(spec[key]):
      raise FileNotFoundError(f'retrieval corpus (real_mini): the {key} '
                              f'folder {spec.get(key)!r} does not exist')
  exclude = real_mini_eval_images(spec['medpix'], spec['vqa_rad'])
  yield from read_medpix({'paths': spec['medpix'], 'exclude': exclude})
  yield from read_vqa_rad({'paths': spec['vqa_rad'], 'exclude': exclude})


# ------------------------------------------------------ a corpus by path --

TABLE_EXTENSIONS = ('.jsonl', '.json', '.csv', '.tsv')
TAR_EXTENSIONS = ('.tar', '.tar.gz', '.tgz')
LAYOUTS = ('a JSONL / JSON / CSV / TSV table of image path + caption (images '
           'relative to its folder), Parquet files with image bytes + '
           'caption, webdataset .tar shards, a MedPix 2.0 folder '
           '(Descriptions.json + images/), a VQA-RAD folder (trainset.json + '
           'images/), or a folder of such files (docs/retrieval.md)')


def _kind_of_file(path: str) -> str | None:
  lower = path.lower()
  if lower.endswith(TABLE_EXTENSIONS):
    return 'table'
  if lower.endswith('.parquet'):
    return 'parquet'
  if lower.endswith(TAR_EXTENSIONS):
    return 'webdataset'
  return None


def specs_from_path(path: str, arg: str = 'corpus') -> list[dict]:
  """Reader specs for a corpus given as one path (a file, a glob, or a
  folder; several joined by '+'). A folder is a MedPix 2.0 or VQA-RAD
  folder, else every table / Parquet / tar file directly inside it.
  Errors name `arg` (the config argument the path came from)."""
  path = os.path.expanduser(str(path).strip())
  if not path:
    raise ValueError(f'{arg}: empty; expected {LAYOUTS}')
  if not glob.glob(path) and '+' in path:
    return [s for p in path.split('+') if p for s in specs_from_path(p, arg)]
  hits = sorted(glob.glob(path))
  if not hits:
    raise FileNotFoundError(f'{arg}: {path} does not exist; expected {LAYOUTS}')
  specs = []
  for hit in hits:
    if os.path.isdir(hit):
      if os.path.exists(os.path.join(hit, 'Descriptions.json')):
        specs.append({'kind': 'medpix', 'paths': hit})
        continue
      if os.path.exists(os.path.join(hit, 'trainset.json')):
        specs.append({'kind': 'vqa_rad', 'paths': hit})
        continue
      inside = sorted(os.path.join(hit, f) for f in os.listdir(hit)
                      if _kind_of_file(f) and not f.startswith('.'))
      if not inside:
        raise ValueError(f'{arg}: the folder {hit} holds no corpus file; '
                         f'expected {LAYOUTS}')
      specs.extend(_file_spec(f) for f in inside)
    else:
      if not _kind_of_file(hit):
        raise ValueError(f'{arg}: {hit} is not a corpus file; expected '
                         f'{LAYOUTS}')
      specs.append(_file_spec(hit))
  return specs


def _file_spec(path: str) -> dict:
  kind = _kind_of_file(path)
  spec = {'kind': kind, 'paths': path,
          'source': os.path.splitext(os.path.basename(path))[0]}
  if kind == 'table':
    spec['image_dir'] = os.path.dirname(path)
  return spec


def read_path(spec: dict) -> Iterator[Entry | Skip]:
  """{'kind': 'path', 'paths': <corpus=...>}: the layout found on disk
  (`specs_from_path`)."""
  yield from read_sources(specs_from_path(spec['paths'],
                                          spec.get('arg', 'corpus')))


READERS = {
    'jsonl': read_table, 'csv': read_table, 'table': read_table,
    'parquet': read_parquet, 'webdataset': read_webdataset,
    'synth': read_synth, 'medpix': read_medpix, 'roco': read_roco,
    'vqa_rad': read_vqa_rad, 'real_mini': read_real_mini, 'path': read_path,
}


def read_sources(specs) -> Iterator[Entry | Skip]:
  for spec in specs:
    spec = dict(spec)
    kind = spec.get('kind')
    if kind not in READERS:
      raise ValueError(f'config.retrieval.corpus.sources: unknown kind '
                       f'{kind!r}; expected one of {sorted(READERS)}')
    yield from READERS[kind](spec)


# ---------------------------------------------------------------- storage --


def features():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  text = tfds.features.Text
  return tfds.features.FeaturesDict({
      'id': text(), 'caption': text(), 'source': text(), 'modality': text(),
      'domain': text(),
      # The bytes as distributed: no re-encoding, any size or format.
      'image': tfds.features.Tensor(shape=(), dtype=np.object_),
  })


def _shard_name(index: int, num: int) -> str:
  return f'{DATASET_NAME}-train.array_record-{index:05d}-of-{num:05d}'


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


class _StringColumnWriter:
  """utf-8 blob + int64 offsets: a string column readable by memmap."""

  def __init__(self, path: str):
    self.path = path
    self.f = open(path + '.bin', 'wb')
    self.offsets = [0]

  def add(self, text: str):
    data = text.encode('utf-8')
    self.f.write(data)
    self.offsets.append(self.offsets[-1] + len(data))

  def close(self):
    self.f.close()
    np.save(self.path + '.offsets.npy', np.asarray(self.offsets, np.int64))


class StringColumn:

  def __init__(self, path: str):
    self.offsets = np.load(path + '.offsets.npy', mmap_mode='r')
    size = int(self.offsets[-1])
    self.blob = (np.memmap(path + '.bin', np.uint8, 'r') if size else
                 np.zeros(0, np.uint8))

  def __len__(self):
    return len(self.offsets) - 1

  def __getitem__(self, i: int) -> str:
    a, b = int(self.offsets[i]), int(self.offsets[i + 1])
    return bytes(self.blob[a:b]).decode('utf-8')

  def take(self, rows) -> list[str]:
    return [self[int(i)] for i in rows]


def _given(spec: dict | None) -> str:
  """What the user named for the sources of an ingestion's `spec`:
  'corpus=<path>', else each source's kind and paths."""
  names = []
  for source in (spec or {}).get('sources', ()):
    paths = source.get('paths') or ''
    if source.get('arg'):
      names.append(f"{source['arg']}={paths}")
    else:
      names.append(f"{source.get('kind')} {paths}".strip())
  return ' + '.join(names)


def ingest(entries: Iterable[Entry | Skip], out_dir: str, *,
           shard_size: int = 20000, check_images: bool = True,
           spec: dict | None = None, progress: bool = False) -> dict:
  """Writes a corpus from entries; returns the ingestion report.

  Written to `out_dir + '.partial'` and renamed at the end, so `out_dir`
  either holds a complete corpus or nothing. Corrupt images, duplicates and
  skipped rows are counted (with a few example ids) in the report, which is
  also written to `out_dir/ingest_report.json`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top
  if shard_size < 1:
    raise ValueError(f'corpus shard_size: expected >= 1, got {shard_size}')
  tmp = out_dir.rstrip('/') + '.partial'
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  os.makedirs(tmp)
  feats = features()
  counts = {'read': 0, 'written': 0, 'text_only': 0, 'corrupt_image': 0,
            'duplicate_id': 0, 'duplicate_content': 0}
  skipped: dict[str, int] = {}
  examples: dict[str, list] = {}
  by_source: dict[str, int] = {}
  seen_ids, seen_content = set(), set()
  snapshot = hashlib.sha256(f'mgtil-corpus-v{FORMAT_VERSION}'.encode())
  captions = _StringColumnWriter(os.path.join(tmp, 'captions'))
  ids = _StringColumnWriter(os.path.join(tmp, 'ids'))
  has_image, groups, shard_lengths = [], [], []
  writer, in_shard, shard_paths = None, 0, []

  def note(kind, where):
    examples.setdefault(kind, [])
    if len(examples[kind]) < 5:
      examples[kind].append(where)

  it = entries
  if progress:
    from mgtil_jax.core import logs  # pylint: disable=g-import-not-at-top
    it = logs.progress(entries, desc='ingest corpus', unit=' entries')
  for e in it:
    counts['read'] += 1
    if isinstance(e, Skip):
      skipped[e.reason] = skipped.get(e.reason, 0) + 1
      note(e.reason, e.where)
      continue
    if e.id in seen_ids:
      counts['duplicate_id'] += 1
      note('duplicate_id', e.id)
      continue
    image_hash = hashlib.sha256(e.image).digest() if e.image else b''
    content = hashlib.sha256(image_hash + normalize_caption(e.caption).encode()
                             ).digest()[:16]
    if content in seen_content:
      counts['duplicate_content'] += 1
      note('duplicate_content', e.id)
      continue
    if e.image and check_images:
      try:
        with Image.open(io.BytesIO(e.image)) as img:
          img.load()  # a full decode: verify() misses truncated JPEGs
      except Exception:  # pylint: disable=broad-except
        counts['corrupt_image'] += 1
        note('corrupt_image', e.id)
        continue
    seen_ids.add(e.id)
    seen_content.add(content)
    if writer is None:
      path = os.path.join(tmp, f'shard-{len(shard_paths):05d}.tmp')
      shard_paths.append(path)
      writer = ArrayRecordWriter(path, 'group_size:1')  # random access
    writer.write(feats.serialize_example({
        'id': e.id, 'image': e.image, 'caption': e.caption,
        'source': e.source, 'modality': e.modality, 'domain': e.domain}))
    in_shard += 1
    if in_shard == shard_size:
      writer.close()
      writer = None
      shard_lengths.append(in_shard)
      in_shard = 0
    captions.add(e.caption)
    ids.add(e.id)
    has_image.append(bool(e.image))
    groups.append(caption_group(e.caption))
    snapshot.update(e.id.encode() + b'\0' + image_hash + content)
    counts['written'] += 1
    counts['text_only'] += not e.image
    by_source[e.source] = by_source.get(e.source, 0) + 1
  if writer is not None:
    writer.close()
    shard_lengths.append(in_shard)
  captions.close()
  ids.close()
  if not counts['written']:
    shutil.rmtree(tmp)
    first = next((f'; e.g. {k} at {v[0]}' for k, v in examples.items()), '')
    raise ValueError(f'retrieval corpus: no entry could be ingested from '
                     f'{_given(spec) or out_dir} (read {counts["read"]}, '
                     f'skipped {skipped}, corrupt {counts["corrupt_image"]}'
                     f'{first})')
  num = len(shard_paths)
  files = []
  for i, path in enumerate(shard_paths):
    name = _shard_name(i, num)
    os.replace(path, os.path.join(tmp, name))
    files.append({'file': name, 'rows': shard_lengths[i],
                  'sha256': sha256_file(os.path.join(tmp, name))})
  np.save(os.path.join(tmp, 'has_image.npy'), np.asarray(has_image, bool))
  np.save(os.path.join(tmp, 'caption_group.npy'),
          np.asarray(groups, np.uint64))
  tfds.folder_dataset.write_metadata(
      data_dir=tmp, features=feats,
      split_infos=[tfds.core.SplitInfo(name='train',
                                       shard_lengths=shard_lengths,
                                       num_bytes=0)],
      filename_template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}',
      check_data=False)
  report = {'counts': counts, 'skipped': skipped, 'by_source': by_source,
            'examples': examples}
  manifest = {'format_version': FORMAT_VERSION,
              'snapshot': snapshot.hexdigest()[:32],
              'num_entries': counts['written'],
              'num_with_image': counts['written'] - counts['text_only'],
              'shards': files, 'spec': spec or {}}
  _write_json(os.path.join(tmp, REPORT), report)
  _write_json(os.path.join(tmp, MANIFEST), manifest)
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)
  log.info('corpus %s: %s', out_dir, counts)
  return dict(report, snapshot=manifest['snapshot'])


def _write_json(path: str, obj):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, sort_keys=True, default=str)
  os.replace(tmp, path)


class Corpus:
  """Random access to an ingested corpus (read-only)."""

  def __init__(self, directory: str, verify: bool = False):
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
      raise FileNotFoundError(f'retrieval corpus: {path} not found; '
                              f'{directory} is not an ingested corpus')
    with open(path) as f:
      self.manifest = json.load(f)
    if self.manifest.get('format_version') != FORMAT_VERSION:
      raise ValueError(f'{path}: format_version '
                       f'{self.manifest.get("format_version")}, expected '
                       f'{FORMAT_VERSION}; ingest the corpus again')
    self.directory = directory
    self.snapshot = self.manifest['snapshot']
    self.shard_lengths = [s['rows'] for s in self.manifest['shards']]
    self.shard_starts = np.concatenate([[0], np.cumsum(self.shard_lengths)])
    if verify:
      for s in self.manifest['shards']:
        got = sha256_file(os.path.join(directory, s['file']))
        if got != s['sha256']:
          raise ValueError(f'retrieval corpus: {s["file"]} in {directory} '
                           f'has checksum {got[:12]}, the manifest says '
                           f'{s["sha256"][:12]} (the file changed)')
    self.captions = StringColumn(os.path.join(directory, 'captions'))
    self.ids = StringColumn(os.path.join(directory, 'ids'))
    self.has_image = np.load(os.path.join(directory, 'has_image.npy'))
    self.caption_group = np.load(os.path.join(directory, 'caption_group.npy'))
    n = self.manifest['num_entries']
    if not (len(self.captions) == len(self.ids) == len(self.has_image) ==
            len(self.caption_group) == n == int(self.shard_starts[-1])):
      raise ValueError(f'retrieval corpus {directory}: side columns and '
                       f'shards disagree on the number of entries ({n})')
    self._source = None
    with open(os.path.join(directory, REPORT)) as f:
      self.report = json.load(f)

  def __len__(self):
    return int(self.manifest['num_entries'])

  @property
  def num_shards(self) -> int:
    return len(self.shard_lengths)

  def shard_rows(self, shard: int) -> np.ndarray:
    return np.arange(self.shard_starts[shard], self.shard_starts[shard + 1])

  @property
  def source(self):
    if self._source is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      self._source = tfds.builder_from_directory(
          self.directory).as_data_source(split='train')
    return self._source

  def entry(self, row: int) -> Entry:
    r = self.source[int(row)]
    text = lambda k: r[k].decode('utf-8') if isinstance(r[k], bytes) else r[k]
    return Entry(id=text('id'), image=bytes(r['image']),
                 caption=text('caption'), source=text('source'),
                 modality=text('modality'), domain=text('domain'))

  def image_bytes(self, rows) -> list[bytes]:
    rows = [int(r) for r in rows]
    if not rows:
      return []
    records = self.source.__getitems__(rows)
    return [bytes(r['image']) for r in records]

  def images(self, rows, size: int, threads: int = 4) -> np.ndarray:
    """uint8[len(rows), size, size, 3]; rows must have images."""
    rows = np.asarray(rows, np.int64)
    if len(rows) and not self.has_image[rows].all():
      bad = rows[~self.has_image[rows]][:5]
      raise ValueError(f'retrieval corpus: rows {bad.tolist()} are text-only '
                       '(no image to decode)')
    return decode_many(self.image_bytes(rows), size, threads)


def spec_key(specs, shard_size: int, check_images: bool) -> str:
  """A short hash of what an ingestion reads: the cache key of its output."""
  def clean(spec):
    return {k: (v if isinstance(v, (str, int, float, bool, list, tuple,
                                    dict, type(None))) else repr(v))
            for k, v in dict(spec).items() if k not in ('data_cfg',
                                                         'cache_dir')}
  blob = json.dumps([clean(s) for s in specs] + [shard_size, check_images,
                                                  FORMAT_VERSION],
                    sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:12]


def open_or_ingest(specs, directory: str, *, shard_size: int,
                   check_images: bool, progress: bool = False) -> Corpus:
  """Opens the corpus in `directory`, ingesting `specs` into it first when
  it holds none."""
  if not os.path.exists(os.path.join(directory, MANIFEST)):
    ingest(read_sources(specs), directory, shard_size=shard_size,
           check_images=check_images, progress=progress,
           spec={'sources': [{k: v for k, v in dict(s).items()
                              if k not in ('data_cfg', 'cache_dir')}
                             for s in specs]})
  return Corpus(directory)

