"""Tests of legacytrace.kernel, module by module."""
