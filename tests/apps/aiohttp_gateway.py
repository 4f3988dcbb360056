#!/usr/bin/env python3
"""Gateway for the event-loop trace-context tests: an aiohttp web server
(asyncio, one thread), which starts the task serving a connection when the
connection opens, before any request. GET /work/<id> makes two concurrent
calls to --downstream with an aiohttp ClientSession (`asyncio.gather`, one
keep-alive pool), then answers "done". No tracing code. Prints "listening
on <port>" once ready."""
import argparse
import asyncio
import socket

import aiohttp
from aiohttp import web


async def main(args):
    session = aiohttp.ClientSession(
        base_url=f"http://{args.host}:{args.downstream}",
        connector=aiohttp.TCPConnector(limit=0),
    )

    async def work(request):
        request_id = request.match_info["request_id"]
        replies = await asyncio.gather(
            session.get(f"/leaf/{request_id}/0"), session.get(f"/leaf/{request_id}/1")
        )
        for reply in replies:
            await reply.read()
            reply.raise_for_status()
        return web.Response(text="done\n")

    app = web.Application()
    app.router.add_get("/work/{request_id}", work)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    await web.SockSite(runner, listener).start()
    print(f"listening on {listener.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--downstream", type=int, required=True, help="port")
    asyncio.run(main(parser.parse_args()))
