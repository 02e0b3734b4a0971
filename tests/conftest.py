"""Puts this folder on ``sys.path`` (pytest does so for every conftest's folder), so that test
modules in any subfolder can import the shared builders in ``tests/layer_patterns.py``."""
