"""Run an ASGI app (Starlette) on uvicorn in a background thread, on a socket we bind ourselves.

Binding first means a taken port fails at start-up with a clear :class:`ListenError` (uvicorn
alone would log and exit the process), and port 0 works for tests: ``.port`` is the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
import ssl
import threading
import time
from typing import Any

import uvicorn


def token_ok(token: str | None, sent: str) -> bool:
    """The one bearer-token check of every listener: no token set, or ``sent`` is ``Bearer <token>``
    (compared in constant time)."""
    return token is None or hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())


class ListenError(RuntimeError):
    """A listener cannot bind its address."""


def is_port(text: str) -> bool:
    """0–65535 (0: any free port)."""
    return text.isdigit() and int(text) <= 65535


def split_address(address: str, flag: str = "") -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets, port 0–65535, 0: any free port) → (host, port).

    The one parser of listener addresses: the CLI checks its flags with it too.
    """
    host, sep, port = address.rpartition(":")
    bare_ipv6 = ":" in host and not (host.startswith("[") and host.endswith("]"))
    if not sep or not is_port(port) or bare_ipv6:
        raise ValueError(
            f"{flag + ': ' if flag else ''}expected HOST:PORT with a port from 0 to 65535 (0: any free port), "
            f"got {address!r} (e.g. 127.0.0.1:4327, [::1]:4327)"
        )
    return host.strip("[]") or "127.0.0.1", int(port)


def bind(address: str, flag: str, what: str) -> socket.socket:
    host, port = split_address(address, flag)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # a restart binds at once although closed connections of the last run linger in TIME_WAIT;
    # a port another socket *listens* on still fails (never SO_REUSEPORT: no second server)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(
            f"{what} cannot listen on {address}: {exc.strerror}. Stop the other process or choose "
            f"another address with {flag} HOST:PORT"
        ) from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class ThreadedServer:
    def __init__(
        self,
        app: Any,
        address: str,
        *,
        flag: str,
        what: str,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.what = what
        self._sock = bind(address, flag, what)
        self.host, self.port = self._sock.getsockname()[:2]
        kwargs: dict[str, Any] = {}
        if tls is not None:
            kwargs = {
                "ssl_certfile": tls[0],
                "ssl_keyfile": tls[1],
                "ssl_version": ssl.PROTOCOL_TLS_SERVER,
            }
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            **kwargs,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name=f"http-{what}", daemon=True)

    def _serve(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ListenError(f"{self.what} did not start on {self.host}:{self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self._sock.close()
