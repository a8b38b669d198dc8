"""`emsync sandbox`: run the fake APIs by hand."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

from ..errors import UserError
from .server import Sandbox


def load_scenario(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        scenario = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"cannot read scenario {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UserError(f"scenario {path} is not valid JSON: {exc}") from None
    if not isinstance(scenario, dict):
        raise UserError(f"scenario {path} must be a JSON object")
    return scenario


def serve_forever(*, port: int, scenario_file: str | None, latency_ms: int) -> None:
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {port}")
    if latency_ms < 0:
        raise UserError("--latency-ms must not be negative")
    try:
        sandbox = Sandbox(load_scenario(scenario_file), port=port, latency_ms=latency_ms)
    except OSError as exc:
        raise UserError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
    sandbox.start()
    print(f"emsync sandbox listening on {sandbox.url} (Ctrl-C to stop). Point emsync at it with:\n")
    for name, value in sandbox.env().items():
        print(f"export {name}={value}")
    # oauthlib (connect google) refuses plain http unless this is in the process environment; an env file does
    # not reach it. Only ever for this loopback sandbox: real Google endpoints are https.
    print("export OAUTHLIB_INSECURE_TRANSPORT=1")
    print(f"\nRequest log: curl {sandbox.url}/__sandbox/requests", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
