"""Generate the shipped general instruction set (src/tunesmith/assets/general/instructions.jsonl).

A small, varied set of everyday instructions with short correct answers, and short factual questions
answered in a sentence that restates the question, mixed into task data
(`data.train: [{path: task.jsonl, weight: 0.8}, {path: general, weight: 0.2}]`) so a fine-tune keeps
following ordinary requests. Every example is written here, for this package (no third-party text),
and is licensed like tunesmith itself (Apache-2.0). None of it repeats the forgetting probe
(assets/regression/qa.jsonl): tests/data/test_mix.py checks that no question is shared.

    python scripts/make_general_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "assets" / "general" / "instructions.jsonl"

WRITTEN = [
    ("Rewrite this sentence in the passive voice: The committee approved the new budget.",
     "The new budget was approved by the committee."),
    ("Correct the grammar: She don't like going to the dentist.", "She doesn't like going to the dentist."),
    ("Correct the spelling: I recieved the package yesterday.", "I received the package yesterday."),
    ("Give a one-sentence definition of photosynthesis.",
     "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make sugar and release oxygen."),
    ("Give a one-sentence definition of inflation in economics.",
     "Inflation is the general rise in prices over time, which lowers how much a unit of money can buy."),
    ("What is the opposite of 'generous'?", "Stingy (or selfish)."),
    ("What is the opposite of 'ancient'?", "Modern."),
    ("Suggest a polite way to decline a meeting invitation.",
     "Thank you for the invitation. Unfortunately I can't attend this meeting, but please share the notes and I'll follow up."),
    ("Write a subject line for an email asking to reschedule a call to Thursday.", "Request to move our call to Thursday"),
    ("Summarize in one sentence: The library will close early on Friday because of maintenance work on the heating "
     "system. Normal opening hours resume on Saturday.",
     "The library closes early on Friday for heating maintenance and reopens normally on Saturday."),
    ("Summarize in one sentence: Our team finished the migration two days ahead of schedule, and no customer data "
     "was lost during the switch.", "The team completed the migration early without losing any customer data."),
    ("Turn this into a question: The train leaves at noon.", "Does the train leave at noon?"),
    ("Name three primary colors of paint.", "Red, yellow and blue."),
    ("List the days of the week that start with the letter T.", "Tuesday and Thursday."),
    ("Is a tomato botanically a fruit or a vegetable?", "Botanically, a tomato is a fruit."),
    ("Explain in one sentence why we see lightning before we hear thunder.",
     "Light travels much faster than sound, so the flash reaches us before the noise."),
    ("Give one tip for remembering a new password without writing it down.",
     "Build it from a memorable sentence, for example the first letters of each word plus a number."),
    ("What does the abbreviation 'e.g.' mean?", "It means 'for example' (from the Latin exempli gratia)."),
    ("What does the abbreviation 'ASAP' stand for?", "As soon as possible."),
    ("Convert this to title case: the quick guide to home gardening", "The Quick Guide to Home Gardening"),
    ("Make this sentence more formal: Hey, can you send me that file real quick?",
     "Could you please send me that file at your earliest convenience?"),
    ("Make this sentence more concise: In order to be able to finish on time, we need to start right now.",
     "To finish on time, we must start now."),
    ("Classify the sentiment of this review as positive or negative: The battery died after two days.", "Negative"),
    ("Classify the sentiment of this review as positive or negative: Friendly staff and the food arrived hot.", "Positive"),
    ("Which is heavier: a kilogram of feathers or a kilogram of iron?", "Neither: both weigh one kilogram."),
    ("What is a synonym for 'happy'?", "Cheerful (or joyful, glad)."),
    ("What is a synonym for 'quick'?", "Fast (or rapid, swift)."),
    ("Write a haiku about morning coffee.", "Steam curls from the cup\nbitter warmth wakes sleepy hands\nthe day starts to hum"),
    ("Give two examples of renewable energy sources.", "Solar power and wind power."),
    ("What is the plural of 'mouse' (the animal)?", "Mice."),
    ("What is the plural of 'child'?", "Children."),
    ("What is the past tense of 'swim'?", "Swam."),
    ("What is the past tense of 'bring'?", "Brought."),
    ("Explain what a 'deadline' is to a child in one sentence.", "A deadline is the time by which something has to be finished."),
    ("Put these words in alphabetical order: pear, apple, mango", "apple, mango, pear"),
    ("Complete the proverb: Don't count your chickens ...", "... before they hatch."),
    ("Complete the proverb: Actions speak louder ...", "... than words."),
    ("Write a short thank-you note to a colleague who helped you fix a bug.",
     "Thanks a lot for helping me track down that bug today - your patience and sharp eye saved me hours."),
    ("How many minutes are there in two and a half hours?", "150 minutes."),
    ("If a meeting starts at 9:45 and lasts 50 minutes, when does it end?", "At 10:35."),
    ("What is the difference between weather and climate, in one sentence?",
     "Weather is the day-to-day state of the atmosphere, while climate is its average pattern over many years."),
    ("Give a short example of a simile.", "Her smile was as bright as the sun."),
    ("Reply with only 'yes' or 'no': Is 17 a prime number?", "yes"),
    ("Reply with only 'yes' or 'no': Is 21 a prime number?", "no"),
    ("Format this as a bulleted list: milk, bread, eggs", "- milk\n- bread\n- eggs"),
    ("Extract the email address: Contact Maria at maria.lopez@example.org for details.", "maria.lopez@example.org"),
    ("Extract the date: The invoice is due on 14 March 2025.", "14 March 2025"),
    ("What should you do first if a pan of oil catches fire on the stove?",
     "Turn off the heat and cover the pan with a lid or damp towel; never pour water on it."),
    ("Translate 'thank you' into Spanish.", "Gracias."),
    ("Translate 'good morning' into French.", "Bonjour."),
]

# Short factual questions answered in a whole sentence that restates the question: the style the base
# model answers in (a small model recalls a fact better when it restates the question first), so a
# task fine-tune mixed with this set keeps answering that way. None of these facts is asked by the
# forgetting probe.
FACTS = [
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("What is the capital of Russia?", "The capital of Russia is Moscow."),
    ("What is the capital of China?", "The capital of China is Beijing."),
    ("What is the capital of the United Kingdom?", "The capital of the United Kingdom is London."),
    ("What is the capital of Greece?", "The capital of Greece is Athens."),
    ("What is the capital of Portugal?", "The capital of Portugal is Lisbon."),
    ("What is the capital of Kenya?", "The capital of Kenya is Nairobi."),
    ("What is the capital of Argentina?", "The capital of Argentina is Buenos Aires."),
    ("What is the capital of Norway?", "The capital of Norway is Oslo."),
    ("What is the capital of Ireland?", "The capital of Ireland is Dublin."),
    ("What is the capital of South Korea?", "The capital of South Korea is Seoul."),
    ("Which planet is closest to the Sun?", "The planet closest to the Sun is Mercury."),
    ("Which planet is famous for its large rings?", "Saturn is the planet famous for its large rings."),
    ("Which element has the chemical symbol Fe?", "The element with the chemical symbol Fe is iron."),
    ("Which element has the chemical symbol Ag?", "The element with the chemical symbol Ag is silver."),
    ("Which element has the chemical symbol Na?", "The element with the chemical symbol Na is sodium."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("How many months are there in a year?", "There are twelve months in a year."),
    ("How many minutes are there in an hour?", "There are sixty minutes in an hour."),
    ("What is the largest hot desert in the world?", "The largest hot desert in the world is the Sahara."),
    ("Who wrote the novel Pride and Prejudice?", "Pride and Prejudice was written by Jane Austen."),
    ("Who painted The Starry Night?", "The Starry Night was painted by Vincent van Gogh."),
    ("Who was the first person to walk on the Moon?", "The first person to walk on the Moon was Neil Armstrong."),
    ("What is the fastest land animal?", "The fastest land animal is the cheetah."),
    ("What is the tallest animal in the world?", "The tallest animal in the world is the giraffe."),
    ("What sweet food do bees make?", "Bees make honey."),
    ("What is the largest organ of the human body?", "The largest organ of the human body is the skin."),
    ("Which language do most people in Argentina speak?", "Most people in Argentina speak Spanish."),
    ("Which ocean lies between Europe and North America?", "The Atlantic Ocean lies between Europe and North America."),
    ("Which great river flows through Brazil into the Atlantic?", "The Amazon flows through Brazil into the Atlantic."),
    ("What is 9 plus 6?", "9 plus 6 is 15."),
    ("What is 6 times 4?", "6 times 4 is 24."),
    ("Which number multiplied by itself gives 49?", "7 multiplied by itself gives 49."),
    ("Which colour results from mixing red and white paint?", "Mixing red and white paint gives pink."),
    ("What is the opposite of up?", "The opposite of up is down."),
    ("Which gas do humans need to breathe in to live?", "Humans need to breathe in oxygen to live."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("Which instrument has 88 keys?", "The piano has 88 keys."),
    ("How many players does a soccer team have on the field?", "A soccer team has eleven players on the field."),
    ("Which country is home to the kangaroo?", "The kangaroo is native to Australia."),
    ("What is the currency of Japan?", "The currency of Japan is the yen."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths."),
]


NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
WORDS = ["planet", "garden", "window", "silver", "rocket", "pencil", "summer", "bridge", "coffee", "forest", "market",
         "island", "button", "candle", "jacket", "ladder"]


def computed(rng: random.Random) -> list[tuple[str, str]]:
    """Instructions whose answers are computed, so they are right by construction."""
    out = []
    for _ in range(12):
        a, b = rng.randint(12, 98), rng.randint(12, 98)
        out.append((f"What is {a} plus {b}? Reply with the number only.", str(a + b)))
    for _ in range(8):
        a, b = rng.randint(3, 12), rng.randint(3, 12)
        out.append((f"What is {a} times {b}? Reply with the number only.", str(a * b)))
    for _ in range(8):
        word = rng.choice(WORDS)
        out.append((f"Spell the word '{word}' backwards.", word[::-1]))
    for _ in range(8):
        word = rng.choice(WORDS)
        letter = rng.choice(sorted(set(word)))
        n = word.count(letter)
        out.append((f"How many times does the letter '{letter}' appear in '{word}'? Answer with a word.", NUMBER_WORDS[n]))
    for _ in range(8):
        nums = rng.sample(range(1, 60), 5)
        out.append((f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}",
                    ", ".join(map(str, sorted(nums)))))
    for _ in range(6):
        km = rng.choice([2, 3, 5, 8, 12, 20])
        out.append((f"How many meters are in {km} kilometers?", f"{km * 1000} meters."))
    for _ in range(6):
        words = rng.sample(WORDS, 4)
        out.append((f"Which of these words is the longest: {', '.join(words)}? If several tie, name the first.",
                    max(words, key=len)))
    return out


def main() -> None:
    rng = random.Random(7)
    pairs = WRITTEN + [(f"{q} Answer briefly.", a) for q, a in FACTS] + computed(rng)
    seen, rows = set(), []
    for prompt, answer in pairs:
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append({"id": f"general-{len(rows):03d}", "messages": [{"role": "user", "content": prompt},
                                                                    {"role": "assistant", "content": answer}]})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} examples to {OUT}")


if __name__ == "__main__":
    main()
