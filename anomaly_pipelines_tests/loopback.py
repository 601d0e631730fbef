"""Real servers on 127.0.0.1 for the alert tests: an HTTP webhook receiver and an SMTP server.

Nothing is mocked: the code under test opens real sockets. The webhook server can be told to
answer the next requests with an error status or to stall past the client's timeout.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class WebhookReceiver:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    # Behaviour of the next requests, consumed in order: an int status, ("sleep", seconds) (a
    # slow receiver that then accepts), or ("stall", seconds) (one that never answers in time:
    # it stays silent that long, then fails without recording the request, so what was received
    # does not depend on how fast the test machine is).
    script: list[Any] = field(default_factory=list)
    default_status: int = 200
    attempts: int = 0

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests]


@contextmanager
def webhook_server(path: str = "/hook") -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            with lock:
                receiver.attempts += 1
                action = receiver.script.pop(0) if receiver.script else receiver.default_status
            if isinstance(action, tuple):
                time.sleep(action[1])
                action = 200 if action[0] == "sleep" else 504
            if action == 200:
                with lock:
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "headers": dict(self.headers),
                            "body": json.loads(raw.decode("utf-8")),
                        }
                    )
            self.send_response(int(action))
            self.send_header("Content-Length", "2")
            self.end_headers()
            with suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MailReceiver:
    port: int
    messages: list[dict[str, Any]] = field(default_factory=list)
    refuse_recipients: bool = False
    logins: list[str] = field(default_factory=list)


@contextmanager
def smtp_server(password: str | None = None) -> Iterator[MailReceiver]:
    """aiosmtpd on 127.0.0.1; with ``password`` it requires AUTH (without TLS: loopback only)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    receiver = MailReceiver(port=free_port())

    class Handler:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            if receiver.refuse_recipients:
                return "550 5.1.1 recipient refused"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):
            receiver.messages.append(
                {
                    "from": envelope.mail_from,
                    "to": list(envelope.rcpt_tos),
                    "data": envelope.content.decode("utf-8", "replace"),
                }
            )
            return "250 Message accepted"

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = password is not None and auth_data.password.decode() == password
        if ok:
            receiver.logins.append(auth_data.login.decode())
        return AuthResult(success=ok)

    kwargs: dict[str, Any] = {}
    if password is not None:
        kwargs = {"authenticator": authenticator, "auth_require_tls": False, "auth_required": True}
    controller = Controller(Handler(), hostname="127.0.0.1", port=receiver.port, **kwargs)
    with warnings.catch_warnings():
        # AUTH without TLS is what this loopback-only server is for.
        warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
        controller.start()
    try:
        yield receiver
    finally:
        controller.stop()
