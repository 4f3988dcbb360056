#!/usr/bin/env python3
"""Gateway for the event-loop trace-context tests: FastAPI under uvicorn
(asyncio, one thread), or hypercorn with --hypercorn. GET /work/<id> makes
two concurrent calls to --downstream with httpx (`asyncio.gather`, one
keep-alive pool), then answers "done". No tracing code. Prints "listening
on <port>" once ready."""
import argparse
import asyncio
import contextlib
import socket

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse


def app_for(downstream):
    pool = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        async with httpx.AsyncClient(base_url=downstream, timeout=10) as client:
            pool["client"] = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/work/{request_id}")
    async def work(request_id: str):
        client = pool["client"]
        replies = await asyncio.gather(
            client.get(f"/leaf/{request_id}/0"), client.get(f"/leaf/{request_id}/1")
        )
        for reply in replies:
            reply.raise_for_status()
        return PlainTextResponse("done\n")

    return app


def serve_with_hypercorn(app, listener):
    """hypercorn's asyncio worker on `listener` (it starts the task serving
    a connection when the connection opens)."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"fd://{listener.fileno()}"]
    config.accesslog = None
    listener.listen()
    print(f"listening on {listener.getsockname()[1]}", flush=True)
    asyncio.run(serve(app, config))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--downstream", required=True, help="base URL")
    parser.add_argument("--hypercorn", action="store_true")
    args = parser.parse_args()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    if args.hypercorn:
        serve_with_hypercorn(app_for(args.downstream), listener)
        return
    config = uvicorn.Config(
        app_for(args.downstream), log_level="warning", access_log=False
    )
    print(f"listening on {listener.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main()
