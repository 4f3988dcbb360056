#!/usr/bin/env python3
"""Gateway for the event-loop trace-context tests, on a runtime the agent
has no special support for: one thread, a plain `selectors` loop, no
framework (with --in-context, the whole loop runs in one
`contextvars.Context`, shared by every connection). GET /work/<id>
starts two calls to --downstream at once
(GET /leaf/<id>/0 and /leaf/<id>/1, a new connection each) and answers
"done" once both are back; meanwhile the loop serves other requests.
No tracing code. Prints "listening on <port>" once ready."""
import argparse
import contextvars
import selectors
import socket

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\ndone\n"

loop = selectors.DefaultSelector()


class Request:
    """A request read from `conn`, waiting for its calls."""

    def __init__(self, conn):
        self.conn = conn
        self.head = b""
        self.pending = 0

    def on_readable(self):
        data = self.conn.recv(4096)
        if not data:
            self.close()
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        loop.unregister(self.conn)
        path = self.head.split(b" ", 2)[1].decode()
        request_id = path.rsplit("/", 1)[-1]
        for call in range(2):
            self.pending += 1
            Call(self, f"/leaf/{request_id}/{call}")

    def call_done(self):
        self.pending -= 1
        if self.pending == 0:
            self.conn.setblocking(True)
            self.conn.sendall(RESPONSE)
            self.conn.close()

    def close(self):
        loop.unregister(self.conn)
        self.conn.close()


class Call:
    """One downstream GET, on a connection of its own."""

    def __init__(self, request, path):
        self.request = request
        self.message = (
            f"GET {path} HTTP/1.1\r\nHost: {ARGS.host}\r\nConnection: close\r\n\r\n"
        ).encode()
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.sock.connect_ex((ARGS.host, ARGS.downstream))
        loop.register(self.sock, selectors.EVENT_WRITE, self.on_writable)

    def on_writable(self):
        self.sock.send(self.message)
        loop.modify(self.sock, selectors.EVENT_READ, self.on_readable)

    def on_readable(self):
        if self.sock.recv(65536):
            return
        loop.unregister(self.sock)
        self.sock.close()
        self.request.call_done()


def accept(listener):
    conn, _ = listener.accept()
    conn.setblocking(False)
    request = Request(conn)
    loop.register(conn, selectors.EVENT_READ, request.on_readable)


def main():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((ARGS.host, ARGS.port))
    listener.listen(128)
    listener.setblocking(False)
    loop.register(listener, selectors.EVENT_READ, lambda: accept(listener))
    print(f"listening on {listener.getsockname()[1]}", flush=True)
    while True:
        for key, _ in loop.select():
            key.data()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--downstream", type=int, required=True, help="port")
    parser.add_argument("--in-context", action="store_true")
    ARGS = parser.parse_args()
    if ARGS.in_context:
        contextvars.copy_context().run(main)
    else:
        main()
