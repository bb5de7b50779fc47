"""The canonical internal type every input format becomes."""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")


@dataclass
class Sample:
    """One training example.

    Chat data fills `messages` ([{"role", "content"}], ending with the assistant). Raw text for
    continued pre-training fills `text`. Preference pairs fill `messages` with the prompt turns and
    `chosen` / `rejected` with the two candidate answers. Unpaired feedback (KTO) is a chat whose
    final assistant turn is the completion, with `label` True (desirable) or False (undesirable).
    """

    messages: list[dict] = field(default_factory=list)
    text: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    label: bool | None = None  # unpaired feedback: is the final assistant turn desirable?
    source: str = ""          # "FILE:LINE", for messages that point the user at their data
    id: str | None = None

    @property
    def kind(self) -> str:
        if self.text is not None:
            return "text"
        if self.chosen is not None:
            return "preference"
        if self.label is not None:
            return "unpaired"
        return "chat"

    def prompt_messages(self) -> list[dict]:
        """The conversation up to (not including) the final assistant turn."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[:-1]
        return list(self.messages)

    def reference(self) -> str:
        if self.chosen is not None:
            return self.chosen
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[-1]["content"]
        return self.text or ""

    def to_dict(self) -> dict:
        out: dict = {}
        if self.id is not None:
            out["id"] = self.id
        if self.text is not None:
            out["text"] = self.text
        elif self.chosen is not None:
            # TRL's layout, which the preference format reads back (a "messages" key would not end
            # with the assistant and would fail validation).
            out["prompt"], out["chosen"], out["rejected"] = self.messages, self.chosen, self.rejected
        elif self.label is not None:
            # KTO's layout, which the kto format reads back.
            out["prompt"], out["completion"], out["label"] = self.messages[:-1], self.messages[-1]["content"], self.label
        else:
            out["messages"] = self.messages
        return out
