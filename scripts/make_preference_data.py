"""Generate the shipped preference task: the house style is one plain sentence.

Each pair answers a simple factual question twice: the chosen answer is one sentence with the
fact; the rejected answer is the same sentence followed by what the embedded default model writes
next when left to go on (greedy, cut at a sentence end). The pairs differ only in stopping after
the sentence, in the model's own rambling style, so no surface phrase gives the preference away: a
model trained on them should answer held-out questions in one sentence more often than the base
model does, which the report shows (`one_sentence`, `words`) beside held-out preference accuracy.

    python scripts/make_preference_data.py   # rewrites src/tunesmith/assets/preference/*.jsonl (about 2 min on CPU)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Germany": "Berlin", "Spain": "Madrid",
            "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
            "Greece": "Athens", "Portugal": "Lisbon", "Ireland": "Dublin", "Austria": "Vienna", "Poland": "Warsaw",
            "Sweden": "Stockholm", "Finland": "Helsinki", "Chile": "Santiago", "Cuba": "Havana", "Thailand": "Bangkok",
            "Russia": "Moscow", "China": "Beijing", "India": "New Delhi", "Mexico": "Mexico City", "Turkey": "Ankara",
            "Australia": "Canberra", "Argentina": "Buenos Aires", "Belgium": "Brussels", "Denmark": "Copenhagen",
            "Hungary": "Budapest"}
COLOURS = {"the sky on a clear day": "blue", "grass": "green", "snow": "white", "a ripe banana": "yellow",
           "coal": "black", "a ripe tomato": "red", "an orange": "orange", "chocolate": "brown",
           "a lemon": "yellow", "a polar bear's fur": "white", "a lime": "green", "a flamingo": "pink"}
SOUNDS = {"dog": "barks", "cat": "meows", "cow": "moos", "lion": "roars", "duck": "quacks", "sheep": "bleats",
          "horse": "neighs", "owl": "hoots", "snake": "hisses", "pig": "oinks", "frog": "croaks", "bee": "buzzes"}
LEGS = {"spider": "eight", "insect": "six", "dog": "four", "bird": "two", "horse": "four", "ant": "six",
        "octopus": "eight arms and no", "human": "two", "cat": "four", "chicken": "two", "beetle": "six", "crab": "ten"}
AUTHORS = {"Hamlet": "William Shakespeare", "Pride and Prejudice": "Jane Austen", "War and Peace": "Leo Tolstoy",
           "Don Quixote": "Miguel de Cervantes", "Moby-Dick": "Herman Melville", "1984": "George Orwell",
           "The Odyssey": "Homer", "Oliver Twist": "Charles Dickens", "Frankenstein": "Mary Shelley",
           "Dracula": "Bram Stoker", "Faust": "Johann Wolfgang von Goethe", "Les Miserables": "Victor Hugo"}
OPPOSITES = {"hot": "cold", "tall": "short", "early": "late", "happy": "sad", "fast": "slow", "light": "dark",
             "open": "closed", "full": "empty", "strong": "weak", "rich": "poor", "loud": "quiet", "wet": "dry",
             "young": "old", "hard": "soft", "up": "down", "push": "pull", "win": "lose", "begin": "end",
             "cheap": "expensive", "thick": "thin"}
PLANETS = {"closest to the Sun": "Mercury", "largest in the solar system": "Jupiter", "known as the red planet": "Mars",
           "with the most famous rings": "Saturn", "home to people": "Earth", "farthest from the Sun": "Neptune",
           "hottest in the solar system": "Venus", "that spins on its side": "Uranus"}

def facts():
    """(question, one-sentence answer) pairs."""
    for country, city in CAPITALS.items():
        yield f"What is the capital of {country}?", f"The capital of {country} is {city}."
    for thing, colour in COLOURS.items():
        yield f"What colour is {thing}?", f"{thing[0].upper() + thing[1:]} is {colour}."
    for animal, sound in SOUNDS.items():
        a = "an" if animal[0] in "aeiou" else "a"
        yield f"What sound does {a} {animal} make?", f"{a.title()} {animal} {sound}."
    for animal, legs in LEGS.items():
        a = "an" if animal[0] in "aeiou" else "a"
        yield f"How many legs does {a} {animal} have?", f"{a.title()} {animal} has {legs} legs."
    for word, opposite in OPPOSITES.items():
        yield f"What is the opposite of {word}?", f"The opposite of {word} is {opposite}."
    for clue, planet in PLANETS.items():
        yield f"Which planet is {clue}?", f"The planet {clue} is {planet}."
    for book, author in AUTHORS.items():
        yield f"Who wrote {book}?", f"{book} was written by {author}."


def continuations(questions: list[str], answers: list[str], max_new_tokens: int = 64) -> list[str]:
    """What the default model writes after each answer, greedy, cut after its last full sentence."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.models import load_tokenizer
    from tunesmith.models.default import ensure_default_model

    folder = ensure_default_model()
    tok = load_tokenizer(str(folder))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    out = []
    for start in range(0, len(questions), 16):
        texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True) + a
                 for q, a in zip(questions[start:start + 16], answers[start:start + 16])]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            # min_new_tokens: the model must go on past the sentence, which is the behaviour the pairs reject.
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, min_new_tokens=32, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        for row in ids[:, enc["input_ids"].shape[1]:]:
            text = tok.decode(row, skip_special_tokens=True)
            cut = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
            text = text[:cut + 1] if cut >= 0 and not text.rstrip().endswith((".", "!", "?")) else text.rstrip()
            out.append(text.strip())
    return out


def main() -> None:
    rnd = random.Random(7)
    items = list(facts())
    rnd.shuffle(items)
    tails = continuations([q for q, _ in items], [a for _, a in items])
    rows = [{"prompt": q, "chosen": a, "rejected": f"{a} {tail}"} for (q, a), tail in zip(items, tails)
            if len(tail.split()) >= 8]   # a continuation of a few words would be a weak contrast
    n_test = len(rows) // 5
    out = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "assets" / "preference"
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("test", rows[:n_test]), ("train", rows[n_test:])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
        print(f"{name}: {len(part)} pairs")


if __name__ == "__main__":
    main()
