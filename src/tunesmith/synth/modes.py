"""Synthesis modes: what each asks the teacher and how a reply becomes candidates.

A mode is one `Mode` subclass registered with `@mode`. `request(i)` is the i-th request of a run,
a pure function of the inputs, the seed and i, so a rerun asks exactly the same things in the same
order (every reply already received comes from the cache). Open-ended modes (from-seeds, evolve)
are asked until enough candidates survive curation; the others make one request per input.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.synth.examples import Candidate, parse_pairs
from tunesmith.synth.inputs import Input, Passage

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "synth"


@dataclass
class Request:
    messages: list[dict]
    variant: int
    provenance: dict = field(default_factory=dict)


class Mode:
    name = ""
    help = ""
    prompt_file: str | None = None    # the shipped template under assets/synth
    fields: tuple[str, ...] = ()      # placeholders a user's own template must keep
    open_ended = False                # asked until --n survive, not once per input
    novelty = False                   # candidates must be new against the inputs (ROUGE-L)
    documents = False                 # INPUT is a folder of documents, not a data file

    def __init__(self, inputs: list, template: str | None, opts):
        self.inputs, self.template, self.opts = inputs, template, opts
        system = {i.system for i in inputs} if inputs and isinstance(inputs[0], Input) else {None}
        # A system prompt every input shares is part of the task: synthesized examples keep it.
        self.system = system.pop() if len(system) == 1 else None

    def request(self, i: int) -> Request | None:
        raise NotImplementedError

    def candidates(self, request: Request, reply: str | None) -> list[Candidate]:
        """InvalidReply when the reply holds no usable example."""
        return [self._candidate(p, r, request) for p, r in parse_pairs(reply)]

    def _candidate(self, prompt: str, response: str, request: Request) -> Candidate:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return Candidate([*head, {"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                         {"mode": self.name, **request.provenance})

    def novelty_texts(self) -> list[str]:
        return [i.user_text for i in self.inputs if isinstance(i, Input)]


MODES: dict[str, type[Mode]] = {}


def mode(cls: type[Mode]) -> type[Mode]:
    MODES[cls.name] = cls
    return cls


def load_template(mode_cls: type[Mode], path: str | Path | None) -> str | None:
    if mode_cls.prompt_file is None:
        if path:
            raise UserError(f"--prompt: {mode_cls.name} sends the inputs' own prompts; it takes no template")
        return None
    path = Path(path) if path else ASSETS / mode_cls.prompt_file
    if not path.is_file():
        raise UserError(f"--prompt {path}: file not found", hint=f"copy {ASSETS / mode_cls.prompt_file} and edit it")
    text = path.read_text(encoding="utf-8")
    try:
        text.format(**{f: "" for f in mode_cls.fields})
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"--prompt {path}: bad placeholder {exc}",
                        hint=f"{mode_cls.name} fills {', '.join('{' + f + '}' for f in mode_cls.fields)}; "
                             "write literal braces as {{ }}") from None
    return text


def _show(example: Input) -> str:
    return f"User: {example.user_text}\nAssistant: {example.answer}"


@mode
class FromSeeds(Mode):
    """New tasks in the style of a few seed examples (Self-Instruct), kept only when novel."""

    name = "from-seeds"
    help = "new examples in the style of seed examples (Self-Instruct); INPUT: a data file of seeds"
    prompt_file = "from_seeds.md"
    fields = ("examples", "number")
    open_ended = True
    novelty = True

    def request(self, i: int) -> Request:
        rng = random.Random(self.opts.seed * 1_000_003 + i)
        shown = rng.sample(self.inputs, min(self.opts.examples_per_prompt, len(self.inputs)))
        body = "\n\n".join(f"Example {k + 1}:\n{_show(s)}" for k, s in enumerate(shown))
        text = self.template.format(examples=body, number=i + 1)
        return Request([{"role": "user", "content": text}], i, {"seed_ids": [s.id for s in shown]})


# Evol-Instruct's in-depth and in-breadth rewrites.
EVOLUTIONS = (
    "add one more constraint or requirement to the task",
    "make the input more complicated: more details, a longer or messier input to work from",
    "make it need more steps of reasoning to get the answer right",
    "replace general wording with more specific, concrete details",
    "change the topic or situation to a rarer one of the same kind of task",
)


@mode
class Evolve(Mode):
    """Seeds rewritten into harder or more varied tasks (Evol-Instruct), each answered."""

    name = "evolve"
    help = "rewrite seed examples into harder or more varied ones (Evol-Instruct); INPUT: a data file"
    prompt_file = "evolve.md"
    fields = ("prompt", "response", "operation")
    open_ended = True
    novelty = True

    def request(self, i: int) -> Request:
        seed = self.inputs[i % len(self.inputs)]
        rng = random.Random(self.opts.seed * 1_000_003 + i)
        operation = rng.choice(EVOLUTIONS)
        text = self.template.format(prompt=seed.user_text, response=seed.answer or "", operation=operation)
        return Request([{"role": "user", "content": text}], i, {"seed_ids": [seed.id], "evolution": operation})


@mode
class Relabel(Mode):
    """The teacher answers existing prompts: a big model's behaviour distilled into the small one."""

    name = "relabel"
    help = "the teacher answers the prompts of INPUT (a data file or traffic log; answers in it are replaced)"

    def request(self, i: int) -> Request | None:
        if i >= len(self.inputs):
            return None
        item = self.inputs[i]
        return Request(item.prompt, 0, {"seed_ids": [item.id]})

    def candidates(self, request: Request, reply: str | None) -> list[Candidate]:
        from tunesmith.synth.examples import InvalidReply

        if reply is None or not reply.strip():
            raise InvalidReply("empty reply")
        return [Candidate([*request.messages, {"role": "assistant", "content": reply.strip()}],
                          {"mode": self.name, **request.provenance})]


@mode
class FromDocs(Mode):
    """Question/answer pairs from chunks of the user's documents."""

    name = "from-docs"
    help = "question/answer pairs from passages of documents; INPUT: a .txt/.md/.pdf file or folder"
    prompt_file = "from_docs.md"
    fields = ("passage", "source", "n")
    documents = True

    def request(self, i: int) -> Request | None:
        if i >= len(self.inputs):
            return None
        passage: Passage = self.inputs[i]
        text = self.template.format(passage=passage.text, source=passage.source, n=self.opts.per_chunk)
        return Request([{"role": "user", "content": text}], 0, {"source": passage.source})
