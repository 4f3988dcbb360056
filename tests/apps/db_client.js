// Database and cache clients in Node.js the end-to-end tests instrument
// (like db_client.py): `node db_client.js SCENARIO PORT` prints `ready`,
// waits for a line on stdin, runs the scenario against 127.0.0.1:PORT and
// exits 0.
"use strict";

const SECRET = "4111111111111111";

async function nodePg(port) {
  const { Client } = require("pg");
  const c = new Client({ host: "127.0.0.1", port, user: "sonde", database: "postgres" });
  await c.connect();
  await c.query("CREATE TABLE IF NOT EXISTS orders (id int, note text)");
  // A named statement: parsed once, then bound and executed by name.
  for (let i = 0; i < 3; i++) {
    await c.query({ name: "by-id", text: "SELECT note FROM orders WHERE id = $1", values: [i] });
  }
  await c.query(`SELECT count(*) FROM orders WHERE note = '${SECRET}'`);
  try {
    await c.query("SELECT * FROM missing_table");
  } catch (e) {
    if (e.code !== "42P01") throw e;
  }
  await c.end();
}

async function ioredis(port) {
  const Redis = require("ioredis");
  const r = new Redis({ port, host: "127.0.0.1", lazyConnect: true, enableReadyCheck: false });
  await r.connect();
  await r.set("user:" + SECRET, SECRET);
  await r.get("user:" + SECRET);
  await r.pipeline().set("a", "1").incr("a").get("a").exec();
  try {
    await r.lpush("user:" + SECRET, "x");
  } catch (e) {
    if (!String(e.message).startsWith("WRONGTYPE")) throw e;
  }
  r.disconnect();
}

async function mysql2(port) {
  const mysql = require("mysql2/promise");
  const setup = await mysql.createConnection({ host: "127.0.0.1", port, user: "root" });
  await setup.query("CREATE DATABASE IF NOT EXISTS shop");
  await setup.end();
  // The database named in the handshake.
  const c = await mysql.createConnection({ host: "127.0.0.1", port, user: "root", database: "shop" });
  await c.query("CREATE TABLE IF NOT EXISTS orders (id int, note text)");
  // Server-side prepared statements: COM_STMT_PREPARE once, then
  // COM_STMT_EXECUTE by statement id, the parameters sent in binary.
  await c.execute("INSERT INTO orders VALUES (?, ?)", [7, "card " + SECRET]);
  for (let i = 0; i < 3; i++) {
    await c.execute("SELECT note FROM orders WHERE id = ?", [i]);
  }
  try {
    await c.execute("SELECT id FROM missing_table WHERE id = ?", [1]);
  } catch (e) {
    if (e.errno !== 1146) throw e;
  }
  await c.end();
}

const scenarios = { "node-pg": nodePg, ioredis, "node-mysql2": mysql2 };
const [scenario, port] = [process.argv[2], Number(process.argv[3])];
console.log("ready");
process.stdin.once("data", () => {
  scenarios[scenario](port).then(
    () => {
      console.log("done");
      process.exit(0);
    },
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
});
