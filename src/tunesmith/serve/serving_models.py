"""The model table: GET /v1/models, GET /health, POST /v1/adapters and DELETE /v1/adapters/{name}."""

from __future__ import annotations

import time

from tunesmith.serve.errors import APIError, bad_request, model_not_found
from tunesmith.serve.protocol import LoadAdapterRequest


class ServingModels:
    def __init__(self, state):
        self.state = state

    def health(self) -> dict:
        return {"status": "ok", "engine": self.state.engine.load(), "models": len(self.state.model_names())}

    def adapter_card(self, spec, created: int) -> dict:
        """An adapter as a /v1/models entry (which method it is and which engine path serves it)."""
        return {"id": spec.name, "object": "model", "created": created, "owned_by": "tunesmith",
                "root": str(spec.path), "parent": self.state.base_name, "method": spec.method, "engine": spec.engine}

    def list_models(self, org: str | None = None) -> dict:
        """The base and the adapters `org` may use: every --adapter one, and its own fine-tuned models."""
        state = self.state
        created = int(state.started)
        data = [{"id": state.base_name, "object": "model", "created": created, "owned_by": "tunesmith",
                 "root": str(state.base_path), "parent": None}]
        for name in state.model_names(org)[1:]:
            spec = state.adapters.get(name)
            if spec is not None:        # unloaded between the two reads
                card = self.adapter_card(spec, created)
                if name in state.owners:
                    card["owned_by"] = state.owners[name]
                data.append(card)
        return {"object": "list", "data": data}

    def check_load(self, body: LoadAdapterRequest):
        """The checked real path to load from; 409 for a taken name, 403/400 for a path the policy refuses."""
        if body.name in self.state.model_names():
            raise APIError(409, f"A model named '{body.name}' is already loaded; DELETE it first.",
                           "invalid_request_error", "model_exists", "name")
        return self.state.policy.check(body.path)

    def load_adapter(self, body: LoadAdapterRequest) -> dict:
        """Blocking (reads weights, may build a model): call from a worker thread."""
        path = self.check_load(body)
        spec = self.state.load_adapter(body.name, path)
        return self.adapter_card(spec, int(time.time()))

    def check_unload(self, name: str, org: str | None = None) -> None:
        if name == self.state.base_name:
            raise bad_request("the base model cannot be unloaded", "name")
        if name not in self.state.model_names(org)[1:]:
            raise model_not_found(name, self.state.model_names(org))

    def unload_adapter(self, name: str, org: str | None = None) -> dict:
        """Blocking (waits for the adapter's requests to finish): call from a worker thread."""
        self.check_unload(name, org)
        self.state.unload_adapter(name)
        return {"id": name, "object": "model", "deleted": True}
