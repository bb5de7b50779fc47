"""Data from a stronger model: teachers (remote or local), synthesis modes, curation with a yield report."""
