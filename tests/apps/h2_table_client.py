#!/usr/bin/env python3
"""gRPC unary calls made with a plain HTTP/2 client (hyper-h2) whose HPACK
encoder indexes every field it sends, so the server's dynamic table is in
heavy use: each request carries fields seen once (hundreds in all, so the
4 KiB table keeps evicting) and fields shared by every request (sent as
references into the table while they last). No tracing code.

usage: h2_table_client.py PORT ROUNDS [--wait]

Each round sends 8 requests at once on one connection and reads every
answer; prints `ok <calls answered with grpc-status 0>`, or raises on a
GOAWAY, a reset stream or a failed call. With --wait, it connects once a
line arrives on stdin.
"""
import argparse
import socket
import sys

import h2.config
import h2.connection
import h2.events

CONCURRENT = 8
UNIQUE_FIELDS = 12
SHARED_FIELDS = 10


def request(round_no, i):
    """A unary call's fields: the usual ones, shared ones, unique ones."""
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "127.0.0.1"),
        (":path", "/sonde.test.Echo/Unary"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *[(f"x-shared-{j}", f"shared-value-{j}") for j in range(SHARED_FIELDS)],
        *[(f"x-unique-{round_no}-{i}-{j}", f"value-{round_no}-{i}-{j}") for j in range(UNIQUE_FIELDS)],
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("rounds", type=int)
    parser.add_argument("--wait", action="store_true")
    args = parser.parse_args()
    if args.wait:
        sys.stdin.readline()
    sock = socket.create_connection(("127.0.0.1", args.port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    answered = 0
    for round_no in range(args.rounds):
        status, bodies = {}, {}
        for i in range(CONCURRENT):
            stream = conn.get_next_available_stream_id()
            message = b"call %d %d" % (round_no, i)
            conn.send_headers(stream, request(round_no, i))
            conn.send_data(stream, b"\x00" + len(message).to_bytes(4, "big") + message, end_stream=True)
            bodies[stream] = b""
        sock.sendall(conn.data_to_send())
        while len(status) < CONCURRENT:
            data = sock.recv(65536)
            assert data, "the server closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, (h2.events.ConnectionTerminated, h2.events.StreamReset)):
                    raise AssertionError(f"{event}")
                if isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if isinstance(event, h2.events.TrailersReceived):
                    status[event.stream_id] = dict(event.headers).get("grpc-status")
            sock.sendall(conn.data_to_send())
        for stream, code in status.items():
            assert code == "0", (stream, code)
            assert bodies[stream][5:].startswith(b"call %d " % round_no), bodies[stream]
            answered += 1
    conn.close_connection()
    sock.sendall(conn.data_to_send())
    sock.close()
    print("ok", answered, flush=True)


if __name__ == "__main__":
    main()
