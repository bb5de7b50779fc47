"""A `tunesmith synth --check` function for the quickstart's order task: keep an example only when every
value of its answer is in the request, so an answerer that made a value up (a default city, a colour the
order never named) does not teach the student to make values up.

    tunesmith synth from-seeds seeds.jsonl -o synth.jsonl ... --check examples/synth/order_check.py
"""

import json
import re

NUMBER_WORDS = {1: ("one", "single", "a ", "an "), 2: ("two", "pair"), 3: ("three",), 4: ("four",), 5: ("five",),
                6: ("six", "half a dozen"), 7: ("seven",), 8: ("eight",), 9: ("nine",), 10: ("ten",), 11: ("eleven",),
                12: ("twelve", "dozen")}


def check(example: dict) -> bool | str:
    request = example["messages"][-2]["content"].split("Order:", 1)[-1].lower()
    try:
        answer = json.loads(example["messages"][-1]["content"])
    except json.JSONDecodeError:
        return "the answer is not JSON"
    if not isinstance(answer, dict):
        return "the answer is not a JSON object"
    if answer.get("priority") not in ("high", "normal"):
        return "priority not high or normal"
    for key in ("item", "color", "city"):
        value = str(answer.get(key, "")).lower()
        # The item is singular in the answer, often plural in the request (scarf, scarves): its stem will do.
        stem = value[:max(3, len(value) - 1)] if key == "item" else value
        if not value or stem not in request:
            return f"{key} not in the request"
    quantity = answer.get("quantity")
    numbers = [int(n) for n in re.findall(r"\b\d+\b", request)]
    if quantity not in numbers and not any(word in request for word in NUMBER_WORDS.get(quantity, ())):
        return "quantity not in the request"
    return True
