// Node.js h2c test server (core `http2`, cleartext with prior knowledge),
// unmodified by any tracing. GET or POST /status/<code>?sleep=<ms> replies
// <code> after sleeping; anything else 200 "ok". Prints "listening on
// <port>" once ready.
const http2 = require("http2");

const port = Number(process.argv[2] || 0);
const server = http2.createServer();
server.on("stream", (stream, headers) => {
  const url = new URL(headers[":path"], "http://localhost");
  const sleep = Number(url.searchParams.get("sleep") || 0);
  const match = url.pathname.match(/^\/status\/(\d+)$/);
  const status = match ? Number(match[1]) : 200;
  stream.resume();
  stream.on("end", () => {
    setTimeout(() => {
      stream.respond({ ":status": status, "content-type": "text/plain" });
      stream.end(`status ${status}\n`);
    }, sleep);
  });
});
server.listen(port, "127.0.0.1", () => {
  console.log(`listening on ${server.address().port}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
