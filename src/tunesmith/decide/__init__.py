"""`tunesmith decide`: should this task be fine-tuned at all? (run.py has the order of work)."""

from tunesmith.decide.options import DecideOptions
from tunesmith.decide.recommend import Recommendation, break_even, recommend
from tunesmith.decide.run import decide

__all__ = ["DecideOptions", "Recommendation", "break_even", "decide", "recommend"]
