// Node.js HTTPS test server with Node's built-in TLS (its OpenSSL is inside
// the `node` executable), unmodified by any tracing:
//   node tls_server.js --cert C --key K [--h2] [--port P]
// HTTP/1.1 (`https`), or with --h2 HTTP/2 over TLS (`http2.createSecureServer`,
// ALPN h2). GET or POST /status/<code>?sleep=<ms> replies <code> after
// sleeping; anything else 200. Prints "listening on <port>" once ready.
const fs = require("fs");
const https = require("https");
const http2 = require("http2");

const args = process.argv.slice(2);
const option = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const tls = { cert: fs.readFileSync(option("--cert")), key: fs.readFileSync(option("--key")) };
const port = Number(option("--port") || 0);

// The compatibility API of `http2` gives the same (req, res) as `https`.
const handle = (req, res) => {
  const url = new URL(req.url, "https://localhost");
  const sleep = Number(url.searchParams.get("sleep") || 0);
  const match = url.pathname.match(/\/status\/(\d+)$/);
  const status = match ? Number(match[1]) : 200;
  req.resume();
  req.on("end", () => {
    setTimeout(() => {
      res.writeHead(status, { "content-type": "text/plain" });
      res.end(`status ${status}\n`);
    }, sleep);
  });
};
const server = args.includes("--h2")
  ? http2.createSecureServer(tls, handle)
  : https.createServer(tls, handle);
server.listen(port, "127.0.0.1", () => {
  console.log(`listening on ${server.address().port}`);
});
process.on("SIGTERM", () => process.exit(0));
