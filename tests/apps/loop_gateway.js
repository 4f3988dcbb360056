// Gateway for the event-loop trace-context tests: Node.js `http` server
// (one event loop thread). No tracing code.
//   node loop_gateway.js PORT DOWNSTREAM [--fetch] [--cert C --key K] [--background]
// GET /work/<id> calls the downstream base URL twice in turn, with a timer
// between, then answers "done": through one keep-alive http.Agent, or with
// --fetch through fetch (undici's keep-alive pool). With --cert/--key it
// serves HTTPS (`https`, Node's built-in TLS). With --background it also
// calls GET /leaf/background/<n> in a loop, 5 ms apart, for no request,
// through the same pool. GET /state answers whether
// anything in the process differs from how it started (methods wrapped,
// diagnostics channels subscribed, a global of Sonde's): "pristine" or
// what changed. Prints "listening on <port>" once ready.
const channels = require("diagnostics_channel");
const fs = require("fs");
const http = require("http");
const https = require("https");
const net = require("net");

const args = process.argv.slice(2);
const option = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const port = Number(args[0] || 0);
const downstream = args[1];
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

function get(path) {
  if (args.includes("--fetch")) {
    return fetch(downstream + path).then((res) => res.text());
  }
  return new Promise((resolve, reject) => {
    http
      .get(downstream + path, { agent }, (res) => {
        res.resume();
        res.on("end", resolve);
      })
      .on("error", reject);
  });
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// What the process looks like before anyone touches it.
const methods = [
  [net.Socket.prototype, "_writeGeneric"],
  [http.Agent.prototype, "addRequest"],
  [http.ClientRequest.prototype, "onSocket"],
];
const originals = methods.map(([target, name]) => target[name]);
function changes() {
  const changed = methods
    .filter(([target, name], i) => target[name] !== originals[i])
    .map(([, name]) => `${name} wrapped`);
  for (const name of ["http.server.request.start", "undici:request:create", "undici:client:sendHeaders"]) {
    if (channels.hasSubscribers(name)) changed.push(`${name} subscribed`);
  }
  // (Node adds globals of its own, undici's dispatcher on first fetch.)
  const sondes = Object.getOwnPropertySymbols(globalThis).filter((key) => key.description.startsWith("sonde"));
  if (sondes.length) changed.push("a global of Sonde's");
  return changed.length ? changed.join(", ") : "pristine";
}

async function handle(req, res) {
  req.resume();
  if (req.url === "/state") {
    res.end(changes() + "\n");
    return;
  }
  const id = req.url.split("/").pop();
  try {
    await get(`/leaf/${id}/0`);
    await pause(2);
    await get(`/leaf/${id}/1`);
    res.writeHead(200, { "Content-Type": "text/plain" });
    res.end("done\n");
  } catch (err) {
    res.writeHead(502);
    res.end(String(err));
  }
}

if (args.includes("--background")) {
  (async () => {
    for (let n = 0; ; n++) {
      await get(`/leaf/background/${n}`).catch(() => {});
      await pause(5);
    }
  })();
}

const server = option("--cert")
  ? https.createServer({ cert: fs.readFileSync(option("--cert")), key: fs.readFileSync(option("--key")) }, handle)
  : http.createServer(handle);
server.listen(port, "127.0.0.1", () => console.log(`listening on ${server.address().port}`));
process.on("SIGTERM", () => process.exit(0));
