"""Generate the lookup task: which bin holds a part? Answers are looked up, not reasoned out.

Every part number has one arbitrary storage bin. Training data asks for each part three ways; the
test asks for parts seen in training a fourth way. A similar training example holds the answer, so
retrieval few-shot (the most similar examples as demonstrations) only has to copy it, while a quick
fine-tune has to memorise 60 arbitrary codes. `tunesmith decide` should find that fine-tuning does
not pay here.

    python scripts/make_lookup_data.py   # rewrites src/tunesmith/assets/lookup/*.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PARTS = ["hinge", "bracket", "gasket", "valve", "spring", "bearing", "washer", "clamp", "pulley", "sprocket",
         "bushing", "coupling"]
TRAIN_TEMPLATES = ["Which bin holds part {code} ({part})?", "Where is the {part} with part number {code} stored?",
                   "Storage location for {part} {code}, please."]
TEST_TEMPLATE = "I need part {code}, the {part}. Which bin is it in?"
N_PARTS, N_TEST = 60, 40


def main(out: Path = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "assets" / "lookup") -> None:
    rng = random.Random(7)
    codes = rng.sample(range(1000, 10000), N_PARTS)
    items = []
    for code in codes:
        part = rng.choice(PARTS)
        bin_ = f"{rng.choice('ABCDEFGH')}{rng.randint(1, 40)}-{rng.choice(['top', 'middle', 'bottom'])}"
        items.append((f"P-{code}", part, f"Bin {bin_}"))
    train, test = [], []
    for code, part, answer in items:
        for t in TRAIN_TEMPLATES:
            train.append((t.format(code=code, part=part), answer))
    rng.shuffle(train)
    for code, part, answer in rng.sample(items, N_TEST):
        test.append((TEST_TEMPLATE.format(code=code, part=part), answer))
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for i, (question, answer) in enumerate(rows):
                fh.write(json.dumps({"id": f"{name}-{i:04d}", "messages": [
                    {"role": "user", "content": question}, {"role": "assistant", "content": answer}]}) + "\n")


if __name__ == "__main__":
    main()
