"""HTTP server that accepts `Upgrade: h2c` from HTTP/1.1 (hypercorn, an
ASGI server from PyPI), unmodified by any tracing. GET /status/<code>
replies <code>; anything else 200 "ok". Prints "listening on <port>" once
its socket listens."""

import asyncio
import re
import socket

from hypercorn.asyncio import serve
from hypercorn.config import Config


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    match = re.fullmatch(r"/status/(\d+)", scope["path"])
    status = int(match.group(1)) if match else 200
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": f"status {status}\n".encode()})


def main():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    config = Config()
    config.bind = [f"fd://{listener.fileno()}"]
    config.accesslog = None
    print(f"listening on {listener.getsockname()[1]}", flush=True)
    asyncio.run(serve(app, config))


if __name__ == "__main__":
    main()
