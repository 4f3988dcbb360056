"""The FastAPI service of `cargo xtask bench`, run by uvicorn.

Plain by default. With BENCH_OTEL_SDK=1 it is instrumented the usual way:
the OpenTelemetry SDK with a BatchSpanProcessor exporting OTLP/HTTP (to the
endpoint in OTEL_EXPORTER_OTLP_ENDPOINT) and FastAPIInstrumentor. The
instrumentor's per-message "http send"/"http receive" spans are excluded so
that the SDK, like the agent, exports one server span per request.
"""

import os

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
async def hello() -> str:
    return "hello from fastapi\n"


if os.environ.get("BENCH_OTEL_SDK") == "1":
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    FastAPIInstrumentor.instrument_app(app, exclude_spans=["receive", "send"])
