"""`config.model.preset` -> the model's architecture: a named preset
(models/clip.py) or a BiomedCLIP checkpoint directory, read from its
open_clip_config.json (models/biomedclip.py). The one name to call with a
user's preset: clip.get_preset knows only the named ones, since biomedclip
builds on clip and clip cannot read checkpoints itself."""

from __future__ import annotations

from mgtil_jax.models import biomedclip

get_preset = biomedclip.preset_config
