#!/usr/bin/env python3
"""gRPC test client (grpcio, no generated code), unmodified by any tracing.

usage: grpc_client.py PORT suite [--ca CERT] [--wait]
       grpc_client.py PORT concurrent N [--ca CERT] [--wait]

With --ca, the channel is TLS and trusts CERT. With --wait, it connects
once a line arrives on stdin (a test's go, once the agent selected it).

`suite` makes, on one channel and in this order: a unary call carrying a
`traceparent`, a unary call the server fails with NOT_FOUND, a unary call
whose 200 ms deadline passes while the server sleeps, a server-streaming
call of 3 messages and a client-streaming call of 4. It prints one line per
call: `<method> <status name> <detail>`.

`concurrent N` starts N unary calls at once on one channel, waits for all
and prints `concurrent <N ok>`.
"""
import argparse
import sys

import grpc

SERVICE = "/sonde.test.Echo/"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def report(method, call):
    try:
        detail = call()
        print(method, "OK", detail if isinstance(detail, (int, str)) else len(detail), flush=True)
    except grpc.RpcError as error:
        print(method, error.code().name, "-", flush=True)


def suite(channel):
    unary = channel.unary_unary(SERVICE + "Unary")
    report("Unary", lambda: unary(b"ok", metadata=(("traceparent", TRACEPARENT),)))
    report("Unary", lambda: unary(b"code=5"))
    report("Unary", lambda: unary(b"sleep=1", timeout=0.2))
    server_stream = channel.unary_stream(SERVICE + "ServerStream")
    report("ServerStream", lambda: len(list(server_stream(b"count=3"))))
    client_stream = channel.stream_unary(SERVICE + "ClientStream")
    report("ClientStream", lambda: client_stream(iter([b"a", b"b", b"c", b"d"])).decode())


def concurrent(channel, n):
    unary = channel.unary_unary(SERVICE + "Unary")
    calls = [unary.future(b"call %d" % i) for i in range(n)]
    ok = sum(1 for i, call in enumerate(calls) if call.result() == b"call %d" % i)
    print("concurrent", ok, flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port")
    parser.add_argument("action")
    parser.add_argument("count", type=int, nargs="?")
    parser.add_argument("--ca")
    parser.add_argument("--wait", action="store_true")
    args = parser.parse_args()
    if args.wait:
        sys.stdin.readline()
    target = f"127.0.0.1:{args.port}"
    if args.ca:
        with open(args.ca, "rb") as ca:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca.read())
        channel = grpc.secure_channel(target, credentials)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        if args.action in ("suite", "fixture"):
            suite(channel)
        elif args.action == "concurrent":
            concurrent(channel, args.count)
        else:
            sys.exit(f"unknown action {args.action}")


if __name__ == "__main__":
    main()
