"""Database and cache clients the end-to-end tests instrument.

`db_client.py SCENARIO PORT` connects nothing until told: it prints
`ready`, waits for a line on stdin (the agent is then watching), runs the
scenario against the server on 127.0.0.1:PORT and exits 0. Every scenario
uses the real client library, unmodified.
"""

import asyncio
import sys

SECRET = "4111111111111111"


def redis_py(port):
    import redis

    for protocol in (2, 3):
        r = redis.Redis(port=port, protocol=protocol)
        r.set("user:" + SECRET, SECRET)
        r.get("user:" + SECRET)
        try:
            r.lpush("user:" + SECRET, "x")  # WRONGTYPE
        except redis.ResponseError:
            pass
        p = r.pipeline(transaction=False)
        p.set("a", 1)
        p.incr("a")
        p.get("a")
        p.execute()
        t = r.pipeline(transaction=True)
        t.set("b", 2)
        t.incr("b")
        t.execute()
        r.close()
    # 1,000 calls on one connection.
    r = redis.Redis(port=port)
    for i in range(1000):
        r.get("k%d" % i)
    r.close()


def psycopg_client(port):
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=port, user="sonde", dbname="postgres", autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS orders (id int, note text)")
        c.execute("INSERT INTO orders VALUES (1, 'card %s')" % SECRET)
        for i in range(3):
            # Prepared as _pg3_N on first use, then executed by name.
            c.execute("SELECT note FROM orders WHERE id = %s", (i,), prepare=True)
        try:
            c.execute("SELECT 1/0")
        except psycopg.errors.DivisionByZero:
            pass
        with c.pipeline():
            c.execute("SELECT count(*) FROM orders")
            c.execute("UPDATE orders SET note = %s WHERE id = %s", ("x", 1))
            c.execute("DELETE FROM orders WHERE id = 99")
        for i in range(1000):
            c.execute("SELECT %s::int", (i,))


def asyncpg_client(port):
    import asyncpg

    async def run():
        c = await asyncpg.connect(host="127.0.0.1", port=port, user="sonde", database="postgres", ssl=False)
        for i in range(3):
            await c.fetch("SELECT id FROM orders WHERE id = $1", i)
        try:
            await c.fetch("SELECT * FROM missing_table")
        except asyncpg.exceptions.UndefinedTableError:
            pass
        await c.close()

    asyncio.run(run())


def pymemcache_client(port):
    from pymemcache.client.base import Client

    c = Client(("127.0.0.1", port), default_noreply=False)
    c.set("session:" + SECRET, SECRET.encode())
    c.get("session:" + SECRET)
    c.get_many(["a", "b"])
    c.incr("n", 1)
    try:
        c.raw_command(b"bogus", b"\r\n")
    except Exception:
        pass
    c.close()


def pymysql_client(port):
    import pymysql

    c = pymysql.connect(host="127.0.0.1", port=port, user="root", autocommit=True)
    cur = c.cursor()
    cur.execute("CREATE DATABASE IF NOT EXISTS shop")
    c.select_db("shop")
    cur.execute("CREATE TABLE IF NOT EXISTS orders (id int, note text)")
    # PyMySQL interpolates parameters client side: the literals reach the
    # wire and must not reach the spans.
    cur.execute("INSERT INTO orders VALUES (%s, %s)", (1, "card " + SECRET))
    cur.execute("SELECT note FROM orders WHERE id = %s", (1,))
    cur.fetchall()
    try:
        cur.execute("SELECT * FROM missing_table")
    except pymysql.err.ProgrammingError:
        pass
    c.close()


SCENARIOS = {
    "redis-py": redis_py,
    "psycopg": psycopg_client,
    "asyncpg": asyncpg_client,
    "pymemcache": pymemcache_client,
    "pymysql": pymysql_client,
}

if __name__ == "__main__":
    scenario, port = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    sys.stdin.readline()
    SCENARIOS[scenario](port)
    print("done", flush=True)
