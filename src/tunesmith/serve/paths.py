"""Adapter paths a client may name: only inside --adapter-dir, after resolving every symlink.

A client sends a path in POST /v1/adapters; the server must never read outside the folder the
operator allowed. `resolve()` follows symlinks first and checks containment second, so neither
`../` nor a link pointing out of the folder gets through, at any depth of the adapter folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from tunesmith.serve.errors import APIError

# An adapter folder is a handful of files; a walk longer than this is a mistake (or an attack on the walk).
MAX_ENTRIES = 10_000


def _refuse_link(what: str) -> APIError:
    return APIError(403, f"Adapter file '{what}' links outside the allowed adapter folder.",
                    "permission_error", "path_not_allowed", "path")


class AdapterDirPolicy:
    def __init__(self, root: str | Path | None):
        self.root = Path(root).expanduser().resolve(strict=True) if root is not None else None

    def _inside(self, real: Path) -> bool:
        return real == self.root or self.root in real.parents

    def check(self, requested: str) -> Path:
        """The real path of `requested` (relative paths are taken under the root), or a 400/403 error.

        Callers load from the returned path, never from `requested` again, so what was checked is
        what is read.
        """
        from tunesmith.serve.adapters import adapter_markers

        if self.root is None:
            raise APIError(403, "Loading adapters at run time is disabled: the server was started without --adapter-dir.",
                           "permission_error", "adapter_dir_not_set", "path")
        if not isinstance(requested, str) or not requested or "\x00" in requested:
            raise APIError(400, "'path' must be a non-empty string", "invalid_request_error", "invalid_value", "path")
        candidate = Path(requested).expanduser()
        if not candidate.is_absolute():
            candidate = self.root / candidate
        real = candidate.resolve(strict=False)
        if not self._inside(real):
            raise APIError(403, f"Adapter path '{requested}' is outside the allowed adapter folder.",
                           "permission_error", "path_not_allowed", "path")
        markers = adapter_markers()
        if not any((real / m).is_file() for m in markers):
            raise APIError(400, f"Adapter path '{requested}' is not an adapter folder (no {' or '.join(markers)}).",
                           "invalid_request_error", "not_an_adapter", "path")
        self._check_tree(real)
        return real

    def _check_tree(self, folder: Path) -> None:
        """Every entry below `folder`, however deep, must resolve inside the root.

        The folder may be inside while a file in it (or in a subfolder) links out (weights -> /etc/...).
        Links to folders are followed, since a loader reading through them would be too; each real
        folder is walked once, so a link cycle ends the walk instead of looping.
        """
        seen: set[Path] = set()
        pending = [folder]
        count = 0
        while pending:
            current = pending.pop()
            if current in seen:
                continue
            seen.add(current)
            with os.scandir(current) as entries:
                for entry in entries:
                    count += 1
                    if count > MAX_ENTRIES:
                        raise APIError(400, f"Adapter folder has more than {MAX_ENTRIES} files; point at the adapter itself.",
                                       "invalid_request_error", "not_an_adapter", "path")
                    target = Path(entry.path).resolve(strict=False)
                    if not self._inside(target):
                        raise _refuse_link(os.path.relpath(entry.path, self.root))
                    if target.is_dir():
                        pending.append(target)
