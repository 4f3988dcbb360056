#!/usr/bin/env python3
"""A service instrumented with the OpenTelemetry Python SDK (not by Sonde):
GET /work extracts the incoming trace context, makes a SERVER span, and
calls every --downstream URL inside a CLIENT span whose context it injects.
Spans go to --otlp (OTLP/HTTP) with service.name "sdk-service"."""
import argparse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--otlp", required=True, help="OTLP/HTTP base endpoint")
    parser.add_argument("--downstream", action="append", default=[])
    args = parser.parse_args()

    provider = TracerProvider(resource=Resource.create({"service.name": "sdk-service"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=args.otlp + "/v1/traces")))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("sdk-service")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def do_GET(self):
            parent = propagate.extract(dict(self.headers))
            with tracer.start_as_current_span("GET /work", context=parent, kind=trace.SpanKind.SERVER):
                for url in args.downstream:
                    with tracer.start_as_current_span("GET", kind=trace.SpanKind.CLIENT):
                        headers = {}
                        propagate.inject(headers)
                        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as reply:
                            reply.read()
                body = b"done\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
