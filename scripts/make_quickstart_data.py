"""Generate the quickstart task: free-text shipping orders -> one strict JSON object.

The base model has to get five fields exactly right (singular item, integer quantity from digits or
number words, colour, city, and a priority inferred from wording), which a 135M model does not do
from an instruction or three examples, and which a LoRA learns in a few minutes.

    python scripts/make_quickstart_data.py   # rewrites src/tunesmith/assets/quickstart/*.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ITEMS = {"mug": "mugs", "lamp": "lamps", "chair": "chairs", "notebook": "notebooks", "backpack": "backpacks",
         "kettle": "kettles", "umbrella": "umbrellas", "scarf": "scarves", "candle": "candles", "towel": "towels",
         "blanket": "blankets", "bottle": "bottles", "pillow": "pillows", "teapot": "teapots"}
COLORS = ["red", "blue", "green", "black", "white", "yellow", "grey", "orange", "purple", "pink"]
CITIES = ["Berlin", "Paris", "Madrid", "Rome", "Oslo", "Vienna", "Lisbon", "Dublin", "Prague", "Warsaw",
          "Athens", "Zurich", "Helsinki", "Brussels"]
WORDS = {1: ["one", "a single"], 2: ["two", "a pair of"], 3: ["three"], 4: ["four"], 5: ["five"], 6: ["six", "half a dozen"],
         7: ["seven"], 8: ["eight"], 9: ["nine"], 10: ["ten"], 11: ["eleven"], 12: ["twelve", "a dozen"]}
HIGH = [" - urgent", ", ASAP please", ". This is a rush order", ", express delivery", ". We need them urgently",
        " as soon as possible"]
NORMAL = ["", "", ". No rush", ", whenever convenient", ". Standard shipping is fine"]
TEMPLATES = [
    "Please send {q} {c} {items} to {city}{p}.",
    "The {city} office needs {q} {c} {items}{p}.",
    "Ship {q} {items} in {c} to our {city} store{p}.",
    "Could you get {q} {c} {items} delivered to {city}{p}?",
    "Order: {q} x {c} {item}, destination {city}{p}.",
    "We'd like {q} {items}, colour {c}, for the {city} branch{p}.",
    "{city} team here: {q} {c} {items} please{p}.",
    "Deliver {q} {c} {items} to the {city} warehouse{p}.",
]
INSTRUCTION = ("Extract the order as JSON with keys item (singular), quantity (integer), color, city and "
               "priority (\"high\" or \"normal\").\nOrder: ")


def make_example(rng: random.Random) -> dict:
    item = rng.choice(sorted(ITEMS))
    qty = rng.randint(1, 12)
    color, city = rng.choice(COLORS), rng.choice(CITIES)
    high = rng.random() < 0.4
    template = rng.choice(TEMPLATES)
    q = str(qty) if rng.random() < 0.5 or "x" in template.split("{q}")[1][:3] else rng.choice(WORDS[qty])
    items = item if qty == 1 else ITEMS[item]
    text = template.format(q=q, c=color, items=items, item=item, city=city, p=rng.choice(HIGH if high else NORMAL))
    text = text.replace("..", ".").replace("?.", "?")
    answer = json.dumps({"item": item, "quantity": qty, "color": color, "city": city,
                         "priority": "high" if high else "normal"})
    return {"messages": [{"role": "user", "content": INSTRUCTION + text[0].upper() + text[1:]},
                         {"role": "assistant", "content": answer}]}


def main(n_train: int = 480, n_test: int = 60, seed: int = 7) -> None:
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < n_train + n_test:
        ex = make_example(rng)
        key = ex["messages"][0]["content"]
        if key not in seen:
            seen.add(key)
            rows.append(ex)
    out = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "assets" / "quickstart"
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.jsonl", rows[:n_train]), ("test.jsonl", rows[n_train:])):
        with open(out / name, "w", encoding="utf-8") as fh:
            for i, row in enumerate(part):
                fh.write(json.dumps({"id": f"{name.split('.')[0]}-{i:04d}", **row}) + "\n")
    print(f"wrote {n_train} train and {n_test} test examples to {out}")


if __name__ == "__main__":
    main()
