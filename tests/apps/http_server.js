// Node.js HTTP test server (core `http` only), unmodified by any tracing.
// GET /status/<code>?sleep=<ms> replies <code> after sleeping; else 200 "ok".
// Prints "listening on <port>" once ready.
const http = require("http");

const port = Number(process.argv[2] || 0);
const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://localhost");
  const sleep = Number(url.searchParams.get("sleep") || 0);
  const match = url.pathname.match(/^\/status\/(\d+)$/);
  const status = match ? Number(match[1]) : 200;
  req.resume();
  req.on("end", () => {
    setTimeout(() => {
      res.writeHead(status, { "Content-Type": "text/plain" });
      res.end(`status ${status}\n`);
    }, sleep);
  });
});
server.listen(port, "127.0.0.1", () => {
  console.log(`listening on ${server.address().port}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
