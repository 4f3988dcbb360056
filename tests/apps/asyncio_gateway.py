#!/usr/bin/env python3
"""Gateway for the event-loop trace-context tests on plain asyncio, no
packages, so that every CPython release runs it: a protocol server that
starts a task per request from `data_received`, as uvicorn does. GET
/work/<id> makes two concurrent calls (`asyncio.gather`) to --downstream
(GET /leaf/<id>/0 and /leaf/<id>/1) over a keep-alive pool of asyncio
stream connections, then answers "done". With --streams, an
`asyncio.start_server` server instead: the task serving a connection is
made when it opens and serves its requests in turn, making call 0 itself
and call 1 in a task it starts for it. No tracing code. Prints
"listening on <port>" once ready."""
import argparse
import asyncio
import socket

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ndone\n"
# The loop keeps only weak references to tasks: these keep them running.
TASKS = set()


class Pool:
    """Idle keep-alive connections to the downstream service."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.idle = []

    async def get(self, path):
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self.idle.append((reader, writer))
        return head.split(b" ", 2)[1], body


class Gateway(asyncio.Protocol):
    """One client connection; a task per request, made where it is read."""

    def __init__(self, pool):
        self.pool = pool
        self.buffer = b""
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1].decode()
            task = asyncio.get_running_loop().create_task(self.serve(path))
            TASKS.add(task)
            task.add_done_callback(TASKS.discard)

    async def serve(self, path):
        request_id = path.rsplit("/", 1)[-1]
        replies = await asyncio.gather(
            self.pool.get(f"/leaf/{request_id}/0"), self.pool.get(f"/leaf/{request_id}/1")
        )
        assert all(status == b"200" for status, _ in replies), replies
        self.transport.write(RESPONSE)


async def serve_connection(pool, reader, writer):
    """asyncio streams: one task per connection, made when it opens."""
    # Before 3.11 start_server keeps no reference to this task.
    TASKS.add(asyncio.current_task())
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            break
        request_id = head.split(b" ", 2)[1].decode().rsplit("/", 1)[-1]
        first = await pool.get(f"/leaf/{request_id}/0")
        task = asyncio.get_running_loop().create_task(pool.get(f"/leaf/{request_id}/1"))
        TASKS.add(task)
        task.add_done_callback(TASKS.discard)
        replies = [first, await task]
        assert all(status == b"200" for status, _ in replies), replies
        writer.write(RESPONSE)
    writer.close()
    TASKS.discard(asyncio.current_task())


async def main(args):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    pool = Pool(args.host, args.downstream)
    if args.streams:
        server = await asyncio.start_server(
            lambda reader, writer: serve_connection(pool, reader, writer), sock=listener
        )
    else:
        server = await asyncio.get_running_loop().create_server(
            lambda: Gateway(pool), sock=listener
        )
    print(f"listening on {listener.getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--downstream", type=int, required=True, help="port")
    parser.add_argument("--streams", action="store_true", help="asyncio.start_server")
    asyncio.run(main(parser.parse_args()))
