#!/usr/bin/env python3
"""Threaded HTTP service for trace-context tests: GET /work calls every
--downstream URL in turn (a new connection each, as urllib does), then
answers 200. No tracing code. Prints "listening on <port>" once ready."""
import argparse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--downstream", action="append", default=[])
    args = parser.parse_args()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def do_GET(self):
            for url in args.downstream:
                with urllib.request.urlopen(url, timeout=10) as reply:
                    reply.read()
            body = b"done\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
