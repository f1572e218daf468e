"""Errors raised while building demo models."""

from __future__ import annotations


class DemoModelError(ValueError):
    """An unknown size or dtype, a bad seed, or a target path that is not safe to overwrite."""
