"""Adapter paths a client may name: only inside --adapter-dir, after resolving every symlink.

A client sends a path in POST /v1/adapters; the server must never read outside the folder the
operator allowed. `resolve()` follows symlinks first and checks containment second, so neither
`../` nor a link pointing out of the folder gets through.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.serve.errors import APIError


class AdapterDirPolicy:
    def __init__(self, root: str | Path | None):
        self.root = Path(root).expanduser().resolve(strict=True) if root is not None else None

    def check(self, requested: str) -> Path:
        """The real path of `requested` (relative paths are taken under the root), or a 400/403 error."""
        if self.root is None:
            raise APIError(403, "Loading adapters at run time is disabled: the server was started without --adapter-dir.",
                           "permission_error", "adapter_dir_not_set", "path")
        if not isinstance(requested, str) or not requested or "\x00" in requested:
            raise APIError(400, "'path' must be a non-empty string", "invalid_request_error", "invalid_value", "path")
        candidate = Path(requested).expanduser()
        if not candidate.is_absolute():
            candidate = self.root / candidate
        real = candidate.resolve(strict=False)
        if real != self.root and self.root not in real.parents:
            raise APIError(403, f"Adapter path '{requested}' is outside the allowed adapter folder.",
                           "permission_error", "path_not_allowed", "path")
        if not (real / "adapter_config.json").is_file():
            raise APIError(400, f"Adapter path '{requested}' is not an adapter folder (no adapter_config.json).",
                           "invalid_request_error", "not_an_adapter", "path")
        # The folder may be inside while a file in it links out (weights -> /etc/...): check each one.
        for child in real.iterdir():
            target = child.resolve(strict=False)
            if self.root not in target.parents:
                raise APIError(403, f"Adapter file '{child.name}' links outside the allowed adapter folder.",
                               "permission_error", "path_not_allowed", "path")
        return real
