#!/usr/bin/env python3
"""Demo 'frontend' service: no tracing code. Each /checkout reads the cart
from Redis (redis-py, a new connection per request) and bumps a counter,
then calls the backend twice (inventory, then payment) and fails when
payment does."""
import argparse
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(backend, redis_port):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def call(self, path):
            try:
                with urllib.request.urlopen(backend + path, timeout=5) as reply:
                    reply.read()
                    return reply.status
            except urllib.error.HTTPError as error:
                return error.code

        def do_GET(self):
            if self.path.startswith("/checkout"):
                if redis_port:
                    import redis

                    cart = redis.Redis(port=redis_port)
                    cart.hgetall("cart:42")
                    cart.incr("checkouts")
                    cart.close()
                self.call("/status/200?sleep=15")
                payment = self.call("/status/500" if "fail" in self.path else "/status/201?sleep=30")
                status = 502 if payment >= 500 else 200
            else:
                status = 200
            body = b"checkout %d\n" % status
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--redis", type=int, default=0, help="redis-server port (none: no cart)")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.backend, args.redis))
    print(f"listening on {args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
