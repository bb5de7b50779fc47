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
from tunesmith.synth.examples import Candidate, InvalidReply, parse_pairs, parse_prompt
from tunesmith.synth.inputs import Input, Passage
from tunesmith.synth.novelty import shared_prefix

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "synth"


@dataclass
class Request:
    messages: list[dict] | str    # a string: a raw completion prompt
    variant: int
    provenance: dict = field(default_factory=dict)
    stop: tuple[str, ...] = ()


class Mode:
    name = ""
    help = ""
    prompt_file: str | None = None    # the shipped template under assets/synth
    fields: tuple[str, ...] = ()      # placeholders a user's own template must keep
    open_ended = False                # asked until --n survive, not once per input
    novelty = False                   # candidates must be new against the inputs (ROUGE-L)
    documents = False                 # INPUT is a folder of documents, not a data file
    answerable = False                # takes --answerer: the teacher writes prompts, the answerer answers

    def __init__(self, inputs: list, template: str | None, opts):
        self.inputs, self.template, self.opts = inputs, template, opts
        system = {i.system for i in inputs} if inputs and isinstance(inputs[0], Input) else {None}
        # A system prompt every input shares is part of the task: synthesized examples keep it.
        self.system = system.pop() if len(system) == 1 else None

    @classmethod
    def template_file(cls, opts) -> str | None:
        """The shipped template this run's requests fill (some modes ask differently under some options)."""
        return cls.prompt_file

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


def load_template(mode_cls: type[Mode], path: str | Path | None, opts=None) -> str | None:
    shipped = mode_cls.template_file(opts)
    if shipped is None:
        if path:
            raise UserError(f"--prompt: {mode_cls.name} sends the inputs' own prompts; it takes no template")
        return None
    path = Path(path) if path else ASSETS / shipped
    if not path.is_file():
        raise UserError(f"--prompt {path}: file not found", hint=f"copy {ASSETS / shipped} and edit it")
    text = path.read_text(encoding="utf-8-sig")
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
    """New tasks in the style of a few seed examples (Self-Instruct), kept only when novel.

    With an answerer (`--answerer`), Self-Instruct's two steps: the teacher writes only a new prompt,
    either asked by chat or, for base and small models, by continuing a numbered list of seed prompts
    as a raw completion; the answerer then answers it (run.py). The opening every seed prompt shares
    (a fixed instruction) is not shown to the writer but put back in front of what it writes.
    """

    name = "from-seeds"
    help = "new examples in the style of seed examples (Self-Instruct); INPUT: a data file of seeds"
    prompt_file = "from_seeds.md"
    fields = ("examples", "number")
    open_ended = True
    novelty = True
    answerable = True
    WRITE_FILES = {"chat": "from_seeds_prompt.md", "completion": "from_seeds_list.md"}
    LABEL = "Request"   # of each item in the completion list

    @classmethod
    def template_file(cls, opts) -> str | None:
        if opts is not None and opts.answerer:
            return cls.WRITE_FILES[opts.write_as or "chat"]
        return cls.prompt_file

    def __init__(self, inputs: list, template: str | None, opts):
        super().__init__(inputs, template, opts)
        self.writes_prompts = bool(opts.answerer)
        self.opening = shared_prefix([i.user_text for i in inputs]) if self.writes_prompts else ""
        # A written prompt is cut where a seed prompt could not go on: as many lines as the longest seed's.
        self.max_lines = max(self._varying(i).count("\n") + 1 for i in inputs)

    def _varying(self, item: Input) -> str:
        return item.user_text[len(self.opening):]

    def request(self, i: int) -> Request:
        rng = random.Random(self.opts.seed * 1_000_003 + i)
        shown = rng.sample(self.inputs, min(self.opts.examples_per_prompt, len(self.inputs)))
        provenance = {"seed_ids": [s.id for s in shown]}
        if not self.writes_prompts:
            body = "\n\n".join(f"Example {k + 1}:\n{_show(s)}" for k, s in enumerate(shown))
            return Request([{"role": "user", "content": self.template.format(examples=body, number=i + 1)}], i,
                           provenance)
        if self.opts.write_as == "completion":
            # Self-Instruct's list: the model continues it with one more item, ended by the next label.
            body = "".join(f"{self.LABEL} {k + 1}: {self._varying(s)}\n" for k, s in enumerate(shown))
            text = self.template.format(examples=body, number=i + 1) + f"{self.LABEL} {len(shown) + 1}:"
            return Request(text, i, provenance, stop=(f"{self.LABEL} {len(shown) + 2}:",))
        body = "\n\n".join(f"{self.LABEL} {k + 1}:\n{self._varying(s)}" for k, s in enumerate(shown))
        return Request([{"role": "user", "content": self.template.format(examples=body, number=i + 1)}], i, provenance)

    def candidates(self, request: Request, reply: str | None) -> list[Candidate]:
        if not self.writes_prompts:
            return super().candidates(request, reply)
        written = parse_prompt(reply)
        written = "\n".join(written.strip().strip('"').splitlines()[:self.max_lines]).strip()
        if not written:
            raise InvalidReply("empty prompt")
        head = [{"role": "system", "content": self.system}] if self.system else []
        # No answer yet: the answerer's (run.py).
        return [Candidate([*head, {"role": "user", "content": self.opening + written}],
                          {"mode": self.name, **request.provenance})]


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
