"""Tests of the ftrace backend."""
