"""A threaded HTTP service whose handler queries PostgreSQL.

`db_web.py PG_PORT`: `GET /orders` opens a psycopg connection, runs two
queries and answers 200 with the row count. Prints `listening on <port>`.
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg

PG_PORT = int(sys.argv[1])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        with psycopg.connect(host="127.0.0.1", port=PG_PORT, user="sonde", dbname="postgres", autocommit=True) as c:
            c.execute("CREATE TABLE IF NOT EXISTS items (id int)")
            rows = c.execute("SELECT id FROM items WHERE id > %s", (0,)).fetchall()
        body = ("%d\n" % len(rows)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print("listening on %d" % server.server_address[1], flush=True)
server.serve_forever()
