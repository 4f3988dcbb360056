#!/usr/bin/env python3
"""Threaded HTTP/1.1 test server (stdlib only), unmodified by any tracing.

GET/POST /status/<code>?sleep=<seconds>  replies <code> after sleeping.
GET /chunked                             a chunked response in 3 chunks.
GET /big?size=<n>                        an n-byte body.
Anything else                            200 "ok".
Prints "listening on <port>" once ready.

--cert CERT --key KEY serves HTTPS instead (the `ssl` module: the
system's OpenSSL).
"""
import argparse
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        sleep = float(query.get("sleep", ["0"])[0])
        if sleep:
            time.sleep(sleep)
        if url.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for part in (b"first ", b"second ", b"third"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        status = 200
        body = b"ok\n"
        if url.path.startswith("/status/"):
            status = int(url.path.rsplit("/", 1)[1])
            body = b"status %d\n" % status
        elif url.path == "/big":
            body = b"x" * int(query.get("size", ["100000"])[0])
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _reply


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
