"""Generate the shipped long-answer task: a course description -> its session schedule as a JSON list.

Each request names a course, the week it starts, how often it meets, how many sessions it has, the
day, time and room, the topics in the order they rotate, and sometimes a holiday week with no class
(the session moves to the next meeting week). The answer is one JSON object per session with six
fields, every one derivable from the request by those rules, so there is one correct answer and a
field-level score (`json_list_f1`). Answers run from about 180 to about 500 tokens in the SmolLM2
tokenizer: the length at which the issue-19 defaults (max_len 512, 2e-4, a fixed generation budget)
dropped examples, cut answers and fell into loops. A 135M model does not write this zero-shot; it
has to learn the format and the counting from a few hundred examples.

    python scripts/make_schedule_data.py   # rewrites src/tunesmith/assets/schedule/*.jsonl (seconds, no model)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SUBJECTS = ["Applied Statistics", "Organic Chemistry", "Medieval History", "Data Structures", "Microeconomics",
            "Marine Biology", "Urban Planning", "Music Theory", "Linear Algebra", "Cell Biology", "Public Speaking",
            "Climate Science", "Film Studies", "Corporate Finance", "Machine Learning", "Renaissance Art",
            "Human Anatomy", "Robotics", "Game Design", "Astronomy", "Food Safety", "Contract Law",
            "Spanish Grammar", "Graph Theory"]
TOPICS = ["basics", "review", "lab", "project", "quiz", "theory", "practice", "reading", "seminar", "workshop",
          "case study", "fieldwork", "tutorial", "exam prep", "guest talk", "debate"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
TIMES = ["08:00", "09:30", "10:15", "11:00", "13:00", "14:30", "15:45", "17:00"]
BUILDINGS = "ABCDEFGH"
EVERY = {1: ["every week", "weekly", "once a week"], 2: ["every 2 weeks", "every other week", "fortnightly"],
         3: ["every 3 weeks"]}
INSTRUCTION = ("Write the schedule as a JSON list with one object per session, keys: session, week, day, time, "
               "room, topic. Sessions are numbered from 1; topics rotate in the order given; a holiday week "
               "has no session and the session moves to the next meeting week.")
TEMPLATES = [
    "{name}: starts in week {start}, meets {every}, {n} sessions, {day} at {time} in room {room}. "
    "Topics in order: {topics}.{holiday}",
    "Course {name} has {n} sessions, {every}, beginning week {start}. Room {room}, {day}s, {time}. "
    "Topic rotation: {topics}.{holiday}",
    "Plan {n} sessions of {name} on {day} at {time} (room {room}), {every} from week {start}. "
    "Rotate topics: {topics}.{holiday}",
]


def schedule(start: int, every: int, n: int, holiday: int | None, day: str, time: str, room: str,
             topics: list[str]) -> list[dict]:
    """The one correct answer: meeting weeks from `start` in steps of `every`, skipping `holiday`."""
    rows, week = [], start
    while len(rows) < n:
        if week != holiday:
            rows.append({"session": len(rows) + 1, "week": week, "day": day, "time": time, "room": room,
                         "topic": topics[len(rows) % len(topics)]})
        week += every
    return rows


def make_example(rng: random.Random) -> dict:
    every = rng.choice([1, 1, 2, 2, 3])
    n = rng.randint(4, 11)
    start = rng.randint(1, 12)
    topics = rng.sample(TOPICS, rng.randint(2, 4))
    day, time = rng.choice(DAYS), rng.choice(TIMES)
    room = f"{rng.choice(BUILDINGS)}{rng.randint(1, 4)}{rng.randint(0, 3)}{rng.randint(1, 9)}"
    meeting_weeks = [start + every * k for k in range(n)]
    holiday = rng.choice(meeting_weeks[1:-1]) if rng.random() < 0.35 else None
    text = rng.choice(TEMPLATES).format(
        name=rng.choice(SUBJECTS), start=start, every=rng.choice(EVERY[every]), n=n, day=day, time=time, room=room,
        topics=", ".join(topics), holiday=f" Holiday: week {holiday}." if holiday else "")
    answer = json.dumps(schedule(start, every, n, holiday, day, time, room, topics))
    return {"messages": [{"role": "user", "content": f"{INSTRUCTION}\n{text}"},
                         {"role": "assistant", "content": answer}]}


def main(n_train: int = 300, n_test: int = 50, seed: int = 19, out: Path | None = None) -> None:
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < n_train + n_test:
        ex = make_example(rng)
        key = ex["messages"][0]["content"]
        if key not in seen:
            seen.add(key)
            rows.append(ex)
    out = out or Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "assets" / "schedule"
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.jsonl", rows[:n_train]), ("test.jsonl", rows[n_train:])):
        with open(out / name, "w", encoding="utf-8") as fh:
            for i, row in enumerate(part):
                fh.write(json.dumps({"id": f"{name.split('.')[0]}-{i:04d}", **row}) + "\n")
    print(f"wrote {n_train} train and {n_test} test examples to {out}")


if __name__ == "__main__":
    main()
