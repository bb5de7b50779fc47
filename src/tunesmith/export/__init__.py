"""Merge, combine and export."""
