"""Real local servers in a thread: any HTTP handler, a file served with range requests (optionally a trickle),
a server that accepts connections and never answers, and a port where nothing listens."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    """A local port nothing listens on (a connection to it is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def silent_server() -> Iterator[str]:
    """A URL on a server that accepts every TCP connection and then sends nothing, ever."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stopped = threading.Event()

    def accept():
        while not stopped.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:  # the listener was closed
                return
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/clip.mp4"
    finally:
        stopped.set()
        listener.close()
        for connection in held:
            connection.close()
        thread.join(timeout=5)


@contextmanager
def file_server(path: Path, seconds_per_chunk: float = 0.0, chunk_bytes: int = 16384) -> Iterator[str]:
    """A URL serving `path` with HTTP range requests (as fsspec reads it); each chunk of a body waits `seconds_per_chunk`."""
    data = path.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.reply(body=False)

        def do_GET(self):
            self.reply(body=True)

        def reply(self, body: bool):
            wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            start = int(wanted[1]) if wanted else 0
            end = min(int(wanted[2]) + 1 if wanted and wanted[2] else len(data), len(data))
            self.send_response(206 if wanted else 200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start))
            if wanted:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            for offset in range(start, end, chunk_bytes) if body else ():
                time.sleep(seconds_per_chunk)
                try:
                    self.wfile.write(data[offset : min(offset + chunk_bytes, end)])
                except (BrokenPipeError, ConnectionResetError):  # the client gave up
                    return

        def log_message(self, *_):
            pass

    with http_server(Handler) as base_url:
        yield f"{base_url}/{path.name}"


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """http://127.0.0.1:<port> answered by `handler` on a thread per request, until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
