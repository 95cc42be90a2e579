"""A fault-injecting HTTP proxy for the S3 server: answers 500 or 503, or stalls, on a share of requests.

It runs as a thread of the test process on 127.0.0.1 in front of moto's server. Every request body is
read whole first (so a refused request never leaves bytes on a kept-alive connection); then the
request is refused with an S3 error, or forwarded and its answer withheld until the client gives up
(a timeout after the server acted: the realistic case), or forwarded and answered.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}
ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


class FaultyProxy:
    """``url`` forwards to ``upstream``; every ``error_500``-th request gets a 500, every ``error_503``-th a
    503, every ``stall``-th is stalled for ``stall_s`` (counted in arrival order, so every kind of fault
    happens in any run of a few dozen requests; None turns a kind off). Every request is delayed by
    ``latency_s`` first, as a remote store's round trip would. ``counts`` says how many requests met each
    fate."""

    def __init__(
        self,
        upstream: str,
        error_500: int | None = 13,
        error_503: int | None = 17,
        stall: int | None = 29,
        stall_s: float = 6.0,
        latency_s: float = 0.0,
    ) -> None:
        self.upstream = urlsplit(upstream)
        planned: list[tuple[int | str, int | None]] = [(500, error_500), (503, error_503), ("stall", stall)]
        self.schedule = [(fate, every) for fate, every in planned if every]
        self.stall_s = stall_s
        self.latency_s = latency_s
        self.counts: Counter[str] = Counter()
        self._requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def fate(self) -> int | str:
        with self._lock:
            self._requests += 1
            for fate, every in self.schedule:
                if self._requests % every == 0:
                    self.counts[str(fate)] += 1
                    return fate
            self.counts["passed"] += 1
            return "pass"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunk = self.rfile.read(size)
                        self.rfile.readline()
                        if size == 0:
                            break
                        chunks.append(chunk)
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _refuse(self, status: int) -> None:
                code, message = ERRORS[status]
                body = (
                    f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                    f"<Message>{message}</Message><RequestId>fault</RequestId></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        if name.lower() not in HOP_BY_HOP and name.lower() not in ("content-length", "expect"):
                            upstream.putheader(name, value)
                    upstream.putheader("Content-Length", str(len(body)))
                    upstream.endheaders(body)
                    response = upstream.getresponse()
                    data = response.read()
                    return response.status, response.getheaders(), data
                finally:
                    upstream.close()

            def _handle(self) -> None:
                body = self._body()
                if proxy.latency_s:
                    time.sleep(proxy.latency_s)
                fate = proxy.fate()
                if isinstance(fate, int):
                    self._refuse(fate)
                    return
                status, headers, data = self._forward(body)
                if fate == "stall":
                    time.sleep(proxy.stall_s)  # the client times out first and retries
                    self.close_connection = True
                    return
                self.send_response(status)
                for name, value in headers:
                    if name.lower() in HOP_BY_HOP or (name.lower() == "content-length" and self.command != "HEAD"):
                        continue
                    self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler

    @contextmanager
    def running(self) -> Iterator[FaultyProxy]:
        thread = threading.Thread(target=self._server.serve_forever, name="faulty-proxy", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(timeout=10)
