"""Data: many formats in, one canonical `Sample` type out, then templates, masks and packing."""

from tunesmith.data.schema import Sample

__all__ = ["Sample"]
