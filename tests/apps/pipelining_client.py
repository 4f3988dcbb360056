#!/usr/bin/env python3
"""HTTP/1.1 pipelining client: on each of --connections connections at
once, sends --pairs pairs of GET /work/<id> requests, the second of each
pair before the first's response (right after it on even pairs, 3 ms later
on odd ones, so it comes in the same read or in a later one), then reads
both responses. Prints "pipelined <n>" with the number of responses.
No tracing code."""
import argparse
import socket
import threading
import time


def read_response(conn, buffer):
    """One response with a Content-Length body; returns the rest."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-response")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        rest += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return rest[length:]


def run(port, first_id, pairs, answered):
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        for pair in range(pairs):
            for second in (0, 1):
                request_id = first_id + 2 * pair + second
                conn.sendall(f"GET /work/{request_id} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
                if pair % 2 and not second:
                    time.sleep(0.003)
            for _ in range(2):
                buffer = read_response(conn, buffer)
                answered.append(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--first-id", type=int, default=0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=25)
    args = parser.parse_args()
    answered = []
    threads = [
        threading.Thread(
            target=run, args=(args.port, args.first_id + i * 2 * args.pairs, args.pairs, answered)
        )
        for i in range(args.connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"pipelined {len(answered)}", flush=True)


if __name__ == "__main__":
    main()
