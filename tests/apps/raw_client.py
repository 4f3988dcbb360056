#!/usr/bin/env python3
"""Sends exact request bytes (hex on the command line), each on a new
connection, after --wait seconds; prints each response's status line.
No tracing code."""
import argparse
import socket
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wait", type=float, default=0)
    parser.add_argument("port", type=int)
    parser.add_argument("requests", nargs="+", help="hex-encoded request bytes")
    args = parser.parse_args()
    time.sleep(args.wait)
    for request in args.requests:
        with socket.create_connection(("127.0.0.1", args.port)) as conn:
            conn.sendall(bytes.fromhex(request))
            reply = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                reply += chunk
        print(reply.split(b"\r\n", 1)[0].decode(), flush=True)


if __name__ == "__main__":
    main()
