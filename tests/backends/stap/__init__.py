"""Tests of the stap backend."""
