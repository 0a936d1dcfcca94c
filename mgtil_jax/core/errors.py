"""Errors the user can fix (a config field, a path, a data file, a
checkpoint), told apart from bugs: `launch.py` prints a `UserError` as one
line and exits 2; anything else keeps its traceback."""

from __future__ import annotations

import os
import traceback


class UserError(ValueError):
  """A bad input; the message names the file or field and what was
  expected. A ValueError, so callers that caught ValueError still do."""


class UserFileError(UserError, FileNotFoundError):
  """A path the user gave (or that a config names) is missing."""


# Folders whose own `raise`s are messages written for the user: a
# ValueError / OSError raised there (not deep inside numpy, jax or orbax)
# names the field or file it is about.
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))  # mgtil_jax/core/errors.py -> the repo
_OWN = tuple(os.path.join(_REPO, d) + os.sep for d in ('mgtil_jax', 'configs'))


def not_utf8(path, error: UnicodeDecodeError) -> UserError:
  """The one line for a text file (a table, a list) that is not UTF-8."""
  bom = error.object[:2] in (b'\xff\xfe', b'\xfe\xff')
  return UserError(
      f'{path}: not UTF-8 text ({error.reason}'
      f'{"; it starts with a UTF-16 byte-order mark" if bom else ""}); '
      'expected UTF-8: save it again as UTF-8')


def is_user_error(error: BaseException) -> bool:
  """A UserError, or a ValueError / OSError raised by this package's own
  code (its innermost frame is in mgtil_jax/ or configs/)."""
  if isinstance(error, UserError):
    return True
  if not isinstance(error, (ValueError, OSError)):
    return False
  frames = traceback.extract_tb(error.__traceback__)
  return bool(frames) and os.path.abspath(frames[-1].filename).startswith(
      _OWN)


def one_line(error: BaseException) -> str:
  """The error as a single line (multi-line messages joined with ' | ')."""
  text = str(error).strip() or type(error).__name__
  if isinstance(error, OSError) and error.filename and not isinstance(
      error, UserError) and str(error.filename) not in text:
    text = f'{error.filename}: {text}'
  return ' | '.join(line.strip() for line in text.splitlines()
                    if line.strip())
