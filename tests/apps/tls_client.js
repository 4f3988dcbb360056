// Node.js HTTPS test client with Node's built-in TLS, unmodified by any
// tracing; trusts the certificate given:
//   node tls_client.js --ca C [--h2] URL...
// Requests each URL in turn, all on one connection (HTTP/1.1 keep-alive
// through `https.Agent`, or with --h2 one `http2.connect` session); a URL
// prefixed "POST " is posted a small body. Prints each response's status
// on a line.
const fs = require("fs");
const https = require("https");
const http2 = require("http2");

const args = process.argv.slice(2);
const ca = fs.readFileSync(args[args.indexOf("--ca") + 1]);
const h2 = args.includes("--h2");
const requests = args
  .filter((arg, i) => arg !== "--h2" && arg !== "--ca" && args[i - 1] !== "--ca")
  .map((arg) => (arg.startsWith("POST ") ? ["POST", arg.slice(5)] : ["GET", arg]));

function overHttps(agent, method, url) {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method, ca, agent }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode));
    });
    req.on("error", reject);
    req.end(method === "POST" ? "hello" : undefined);
  });
}

function overH2(session, method, url) {
  return new Promise((resolve, reject) => {
    const { pathname, search } = new URL(url);
    const stream = session.request({ ":method": method, ":path": pathname + search });
    let status;
    stream.on("response", (headers) => (status = headers[":status"]));
    stream.on("error", reject);
    stream.resume();
    stream.on("end", () => resolve(status));
    stream.end(method === "POST" ? "hello" : undefined);
  });
}

async function main() {
  if (h2) {
    const session = http2.connect(new URL(requests[0][1]).origin, { ca });
    for (const [method, url] of requests) {
      console.log(await overH2(session, method, url));
    }
    session.close();
  } else {
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
    for (const [method, url] of requests) {
      console.log(await overHttps(agent, method, url));
    }
    agent.destroy();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
