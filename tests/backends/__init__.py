"""Tests of the backends (backends/ in the repository, legacytrace.backends installed)."""
