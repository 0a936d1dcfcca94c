"""Model definitions."""
from mgtil_jax.models.clip import (CLIP, ClipConfig, PRESETS, TextConfig,
                                   VisionConfig, class_embeddings,
                                   classify_logits, get_preset, init_params,
                                   l2_normalize, make_model)
