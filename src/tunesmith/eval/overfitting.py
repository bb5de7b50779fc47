"""The overfitting check of a training run's report: validation vs train loss at the same step."""

from __future__ import annotations

from pathlib import Path


def read_train_log(path: Path) -> list[dict]:
    """metrics.jsonl rows; a damaged line (a run killed mid-write) is skipped, a missing file is []."""
    from tunesmith.train.logbook import read_metrics

    return read_metrics(path, skip_damaged=True)


def overfitting_check(log_rows: list[dict], threshold: float) -> dict:
    """Validation minus train loss at the latest step that logged both.

    Both losses come from the same step: the final train loss against the best validation loss
    would compare two different models, and early stopping makes them many steps apart.
    """
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    row = next((r for r in reversed(log_rows) if number(r.get("val_loss")) and number(r.get("loss"))), None)
    if row is None:
        return {"skipped": "no step in metrics.jsonl has both a train and a validation loss "
                           "(validation needs data.val or data.val_split)"}
    gap = row["val_loss"] - row["loss"]
    return {"step": row.get("step"), "train_loss": row["loss"], "val_loss": row["val_loss"], "gap": gap,
            "flagged": gap > threshold, "threshold": threshold}
