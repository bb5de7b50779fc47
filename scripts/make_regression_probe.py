"""Generate the forgetting probe's questions (src/tunesmith/assets/regression/qa.jsonl).

General-knowledge questions with one short answer, scored with `contains_norm` (the answer as whole words in
the reply) on base and tuned model (eval/regression.py). Three phrasings, so that a fine-tune that only
changes how the model answers one kind of request does not pass for forgetting, nor one trained on a single
phrasing for remembering: "... Answer in a few words." (the probe's first 36, ids qa-000 to qa-035, kept),
a sentence to complete with one word, and the bare question. New counts are digits, as the
default model writes them. No fact here is taught by the shipped general
set (assets/general/instructions.jsonl, the mix-in against forgetting): tests/data/test_mix.py checks that no
question shares a run of 6 words with it. Written for this package (no third-party text), Apache-2.0.

150 questions: one is 0.0067 of the score, and the paired 95 % interval of a base-vs-tuned difference is about
+-0.06 wide where 36 questions gave +-0.15.

    python scripts/make_regression_probe.py
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "assets" / "regression" / "qa.jsonl"

FEW_WORDS = " Answer in a few words."
FILL = "Complete the sentence with one word or number: "

# (question, answer): asked with FEW_WORDS after it.
ASKED_BRIEFLY = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the largest planet in our solar system?", "Jupiter"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What is the closest star to Earth?", "Sun"),
    ("What gas do plants absorb from the air for photosynthesis?", "carbon dioxide"),
    ("What is the chemical symbol for gold?", "Au"),
    ("What is the chemical formula of water?", "H2O"),
    ("How many days are there in a week?", "seven"),
    ("How many legs does a spider have?", "eight"),
    ("How many continents are there on Earth?", "seven"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("What is the longest river in Africa?", "Nile"),
    ("What is the tallest mountain in the world?", "Everest"),
    ("Who wrote the play Romeo and Juliet?", "Shakespeare"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    ("Who developed the theory of relativity?", "Einstein"),
    ("What is the freezing point of water in degrees Celsius?", "0"),
    ("What is the boiling point of water in degrees Celsius at sea level?", "100"),
    ("What is 7 times 8?", "56"),
    ("What is 12 plus 15?", "27"),
    ("What is the square root of 81?", "9"),
    ("What color do you get by mixing blue and yellow?", "green"),
    ("What is the opposite of hot?", "cold"),
    ("Which animal is known as the king of the jungle?", "lion"),
    ("What is the largest mammal?", "blue whale"),
    ("What language is mainly spoken in Brazil?", "Portuguese"),
    ("In which country are the pyramids of Giza?", "Egypt"),
    ("What is the hardest natural substance?", "diamond"),
    ("How many hours are there in a day?", "24"),
    ("What is the main ingredient of guacamole?", "avocado"),
    # From here on, added 2026-12-05.
    ("What is the capital of Sweden?", "Stockholm"),
    ("What is the capital of Poland?", "Warsaw"),
    ("What is the capital of Austria?", "Vienna"),
    ("What is the capital of Thailand?", "Bangkok"),
    ("What is the capital of Peru?", "Lima"),
    ("What is the capital of Finland?", "Helsinki"),
    ("Which planet do we live on?", "Earth"),
    ("What natural satellite orbits the Earth?", "Moon"),
    ("What is the chemical symbol for hydrogen?", "H"),
    ("What metal is liquid at room temperature?", "mercury"),
    ("How many wheels does a bicycle have?", "2"),
    ("How many legs does an insect have?", "6"),
    ("How many sides does a triangle have?", "3"),
    ("How many days are there in a leap year?", "366"),
    ("What is 9 times 9?", "81"),
    ("What is 100 minus 35?", "65"),
    ("What is half of 50?", "25"),
    ("Who wrote the play Hamlet?", "Shakespeare"),
    ("Who invented the telephone?", "Bell"),
    ("Who discovered penicillin?", "Fleming"),
    ("What white drink do we get from cows?", "milk"),
    ("What is the opposite of wet?", "dry"),
    ("What is the opposite of early?", "late"),
    ("What color is a ripe banana?", "yellow"),
    ("What is the largest continent?", "Asia"),
    ("In which country is the Eiffel Tower?", "France"),
    ("In which city is the Colosseum?", "Rome"),
    ("What language is mainly spoken in Mexico?", "Spanish"),
    ("What animal is known for its black and white stripes?", "zebra"),
    ("What is the young of a dog called?", "puppy"),
    ("What is the young of a cat called?", "kitten"),
    ("What organ pumps blood through the body?", "heart"),
    ("What do we call a baby frog?", "tadpole"),
    ("What season comes after winter?", "spring"),
]

# (sentence with ___, the word): asked as FILL + sentence.
COMPLETE = [
    ("The capital of the United States is ___.", "Washington"),
    ("The capital of Belgium is ___.", "Brussels"),
    ("The capital of Hungary is ___.", "Budapest"),
    ("The capital of Denmark is ___.", "Copenhagen"),
    ("The capital of Cuba is ___.", "Havana"),
    ("The capital of Vietnam is ___.", "Hanoi"),
    ("The capital of the Philippines is ___.", "Manila"),
    ("The capital of Indonesia is ___.", "Jakarta"),
    ("The Statue of Liberty stands in the city of New ___.", "York"),
    ("Water is made of hydrogen and ___.", "oxygen"),
    ("The planet nearest to Earth that is often called its twin is ___.", "Venus"),
    ("The force that pulls objects toward the ground is called ___.", "gravity"),
    ("A year has fifty-two ___.", "weeks"),
    ("A century is a period of one hundred ___.", "years"),
    ("An octopus has ___ arms.", "8"),
    ("A square has ___ equal sides.", "4"),
    ("Ten plus ten equals ___.", "20"),
    ("Three times five equals ___.", "15"),
    ("Twenty divided by four equals ___.", "5"),
    ("The first month of the year is ___.", "January"),
    ("The last month of the year is ___.", "December"),
    ("The day after Friday is ___.", "Saturday"),
    ("The day before Wednesday is ___.", "Tuesday"),
    ("The color of fresh grass is ___.", "green"),
    ("The color of coal is ___.", "black"),
    ("The opposite of big is ___.", "small"),
    ("The opposite of night is ___.", "day"),
    ("The opposite of empty is ___.", "full"),
    ("A baby sheep is called a ___.", "lamb"),
    ("A baby cow is called a ___.", "calf"),
    ("The animal that says 'moo' is the ___.", "cow"),
    ("Bread is baked in an ___.", "oven"),
    ("We see with our ___.", "eyes"),
    ("We hear with our ___.", "ears"),
    ("Ice melts into ___.", "water"),
    ("The sun rises in the ___.", "east"),
    ("The sun sets in the ___.", "west"),
    ("The ancient Greek poet said to have composed the Odyssey is ___.", "Homer"),
    ("The Great Wall is in the country of ___.", "China"),
    ("The Taj Mahal is in the country of ___.", "India"),
]

# (question, answer): asked as they are.
BARE = [
    ("What is the capital of Turkey?", "Ankara"),
    ("What is the capital of Iran?", "Tehran"),
    ("What is the capital of Iraq?", "Baghdad"),
    ("What is the capital of Chile?", "Santiago"),
    ("What is the capital of Scotland?", "Edinburgh"),
    ("What is the capital of Switzerland?", "Bern"),
    ("Which is the largest country in South America?", "Brazil"),
    ("Which is the smallest planet in our solar system?", "Mercury"),
    ("Which star is at the center of our solar system?", "Sun"),
    ("What is the boiling point of water in degrees Fahrenheit?", "212"),
    ("What is the chemical symbol for carbon?", "C"),
    ("What is the chemical symbol for potassium?", "K"),
    ("What part of the plant takes in water from the soil?", "roots"),
    ("What is the largest bone in the human body?", "femur"),
    ("How many teeth does an adult human usually have?", "32"),
    ("How many strings does a standard guitar have?", "6"),
    ("How many players are on a basketball team on the court?", "5"),
    ("How many seconds are there in a minute?", "60"),
    ("How many years are there in a decade?", "10"),
    ("What is 15 plus 27?", "42"),
    ("What is 11 times 11?", "121"),
    ("What is 144 divided by 12?", "12"),
    ("Who painted the ceiling of the Sistine Chapel?", "Michelangelo"),
    ("Who was the US president during the American Civil War?", "Lincoln"),
    ("Who wrote the Harry Potter books?", "Rowling"),
    ("Who proposed the theory of evolution by natural selection?", "Darwin"),
    ("Who composed the Fifth Symphony that begins with four famous notes?", "Beethoven"),
    ("What is the longest river in South America?", "Amazon"),
    ("What is the largest desert in Asia?", "Gobi"),
    ("On which continent is Egypt?", "Africa"),
    ("What language is mainly spoken in Germany?", "German"),
    ("What language is mainly spoken in Italy?", "Italian"),
    ("What do pandas mostly eat?", "bamboo"),
    ("What is the largest bird in the world?", "ostrich"),
    ("Which animal is known as the ship of the desert?", "camel"),
    ("What is the main gas in the air we breathe?", "nitrogen"),
    ("What do you call a shape with eight sides?", "octagon"),
    ("What instrument do doctors use to listen to a heartbeat?", "stethoscope"),
    ("What is the imaginary line that divides the Earth into northern and southern halves?", "equator"),
    ("What fruit is used to make wine?", "grapes"),
]


def records() -> list[dict]:
    prompts = ([q + FEW_WORDS for q, _ in ASKED_BRIEFLY] + [FILL + s for s, _ in COMPLETE] + [q for q, _ in BARE])
    answers = [a for _, a in ASKED_BRIEFLY + COMPLETE + BARE]
    assert len(set(prompts)) == len(prompts)
    return [{"id": f"qa-{i:03d}", "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
            for i, (p, a) in enumerate(zip(prompts, answers))]


def main() -> None:
    rows = records()
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} questions to {OUT}")


if __name__ == "__main__":
    main()
