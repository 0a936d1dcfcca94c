"""mgtil_jax: retrieval-guided continual learning for medical CLIP models."""
__version__ = '0.1.0'
