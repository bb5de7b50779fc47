"""Run the app under uvicorn (blocking), or in a background thread (tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time

from tunesmith.serve.app import create_app
from tunesmith.serve.state import ServeOptions, ServerState, build_state


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve_forever(options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                  on_ready=None) -> None:
    import uvicorn

    state = build_state(options)
    if on_ready:
        on_ready(state)
    try:
        uvicorn.run(create_app(state), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    finally:
        state.close()


class BackgroundServer:
    """A real uvicorn server on 127.0.0.1 in a thread of this process: `with BackgroundServer(state) as url:`."""

    def __init__(self, state: ServerState, host: str = "127.0.0.1", port: int | None = None):
        import uvicorn

        self.state = state
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(create_app(state), host=host, port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
