#!/usr/bin/env python3
"""gRPC test server (grpcio, no generated code), unmodified by any tracing.

Serves `sonde.test.Echo` through grpc's generic handler API, with raw bytes
as messages, so no protobuf stubs are needed. A request's text says what to
do:

- `Unary`: `ok` echoes; `sleep=<s>` sleeps first; `code=<n>` aborts with
  status n.
- `ServerStream`: `count=<n>` sends n messages.
- `ClientStream`: answers how many messages it got.

Prints "listening on <port>" once ready; stops on SIGTERM.

usage: grpc_server.py [PORT] [--cert CERT --key KEY]   (with TLS if given)
"""
import argparse
import signal
import threading
import time
from concurrent import futures

import grpc

SERVICE = "sonde.test.Echo"


def parse(request):
    """`b"k=v"` -> ("k", "v"); anything else -> (text, "")."""
    key, _, value = request.decode().partition("=")
    return key, value


def unary(request, context):
    key, value = parse(request)
    if key == "sleep":
        time.sleep(float(value))
    elif key == "code":
        context.abort(grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == int(value))), "requested")
    return request


def server_stream(request, context):
    _, value = parse(request)
    for i in range(int(value or 1)):
        yield b"message %d" % i


def client_stream(requests, context):
    return b"got %d" % sum(1 for _ in requests)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int, nargs="?", default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    address = f"127.0.0.1:{args.port}"
    if args.cert:
        with open(args.key, "rb") as key, open(args.cert, "rb") as cert:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    server.start()
    print(f"listening on {port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=None)


if __name__ == "__main__":
    main()
