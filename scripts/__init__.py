"""Developer scripts; Python ones run from the repository root, ``python -m scripts.NAME``."""
