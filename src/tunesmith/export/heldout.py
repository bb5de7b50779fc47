"""Built-in text and prompts for `export gguf --verify` (written for tunesmith; in no training set we use).

The text mixes prose, numbers, a list and a little code so that quantization errors in any part of
the vocabulary show up in the perplexity. Pass --verify-text FILE to measure on your own domain.
"""

HELDOUT_TEXT = """\
The lighthouse at the end of the harbour was built in 1871, when the town still lived from fishing and
the winter storms took two or three boats every year. Its first keeper, a former ship's carpenter, kept
a logbook in which he wrote the weather, the ships that passed and the price of lamp oil. The entries are
short and practical: "Wind north-east, strong. Three trawlers in before dark. Oil 14 pence the gallon."
Reading them today, one notices how much of his work was simply waiting, and how carefully he recorded
the small changes that told him a storm was coming.

By the 1930s the light was electric and the keeper's cottage had become a small museum. Visitors could
climb the 112 steps to the lamp room, look out over the bay and read a panel explaining how a Fresnel
lens bends the light of a single bulb into a beam visible twenty nautical miles away. The lens has
concentric rings of glass prisms; each ring refracts part of the light so that all of it leaves the lamp
in nearly parallel rays. Without the lens, most of the light would be lost upwards or into the sea.

Modern navigation relies far less on lighthouses. Satellite positioning gives a ship its location to
within a few metres, and electronic charts show every rock and buoy. Yet harbour authorities still keep
many lights running, because electronics fail, batteries run flat, and a bright flash every ten seconds
is something every sailor understands without a manual.

A simple way to estimate the distance to the horizon is to take the square root of your eye height in
metres and multiply it by 3.57; the result is in kilometres. From the lamp room, 38 metres above the
water, the horizon lies about 22 kilometres away. A ship's light 10 metres above the sea can be seen
from a further 11 kilometres, so the two can see each other at roughly 33 kilometres in clear weather.

The museum's small shop sells postcards, tide tables and a booklet of recipes from the fishing families.
The most popular recipe is a fish stew: onions and potatoes cooked slowly in butter, then milk, then the
fish for the last ten minutes only, so that it stays firm. The booklet insists on three rules: never let
the milk boil, salt at the end, and serve it with bread baked the same morning.

In the evening, when the museum closes, the light still turns. A volunteer checks the log on a laptop
instead of a paper book, but the entries look familiar:

    date: 2023-11-04
    wind: NE 6
    visibility: good
    vessels: 3 inbound, 1 outbound
    notes: lamp checked, spare bulb replaced

Some things, it seems, are worth writing down in the same way for one hundred and fifty years.

Learning to cook well is mostly learning to pay attention. A recipe gives quantities and times, but a
cook watches the colour of the onions, listens to the sound of the pan and tastes before serving. The
same is true of many crafts: carpentry, gardening, repairing a bicycle. Instructions get you started;
practice teaches you which details matter. A beginner sharpening a chisel follows the angle printed in
the book, while an experienced carpenter feels when the edge is right and stops.

Programmers know this too. A short function is easier to test than a long one, a clear name saves a
comment, and a failing test is more useful than a passing one that checks nothing. For example:

    def mean(values):
        if not values:
            raise ValueError("mean of an empty list")
        return sum(values) / len(values)

The function above refuses an empty list instead of returning zero, because a silent zero would hide a
mistake further up. Good tools, like good lighthouses, make the dangerous cases visible.
"""

VERIFY_PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a lighthouse does in one sentence.",
    "List three fruits that are red.",
    "How many days are there in a leap year?",
    "Give me a tip for learning to cook.",
    "What does a Fresnel lens do?",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "Write a Python function that adds two numbers.",
    "What is 12 times 7?",
    "Name a famous scientist and say what they discovered.",
    "Describe a cat in two sentences.",
    "What should I pack for a day at the beach?",
    "Summarize the plot of Cinderella in one sentence.",
    "What is the boiling point of water in Celsius?",
]
