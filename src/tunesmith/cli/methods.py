"""`tunesmith methods`."""

from __future__ import annotations

from tunesmith.cli.common import app, print_table


@app.command()
def methods():
    """List the fine-tuning methods."""
    from tunesmith.methods import METHODS

    rows = [(name, "yes" if m.mergeable else "no", m.summary) for name, m in METHODS.items()]
    print_table("methods", ["name", "mergeable", "what it trains"], rows)
