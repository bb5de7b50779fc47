"""`tunesmith objectives`: the training objectives, the data each takes, and their options."""

from __future__ import annotations

from tunesmith.cli.common import app, out, print_table


@app.command()
def objectives():
    """List the training objectives (the `objective:` section of a run config) with their options."""
    from tunesmith.methods.docs import yaml_value
    from tunesmith.train.objective_options import option_keys
    from tunesmith.train.objectives import OBJECTIVES

    rows = [(name, cls.summary, cls.data) for name, cls in OBJECTIVES.items()]
    print_table("training objectives (objective.name)", ["objective", "what it optimises", "data"], rows)
    for name, cls in OBJECTIVES.items():
        keys = [f"{k}={yaml_value(cls.options.model_fields[k].get_default())}" for k in option_keys(cls.options)]
        out.print(f"[bold]{name}[/bold] options: {', '.join(keys) or 'none'}", highlight=False)
