// Gateway for the event-loop trace-context tests: Node.js `http` server
// (one event loop thread). GET /work/<id> calls the downstream base URL
// (argv[3]) twice in turn through one keep-alive http.Agent, with a timer
// between, then answers "done". No tracing code. Prints
// "listening on <port>" once ready.
const http = require("http");

const port = Number(process.argv[2] || 0);
const downstream = process.argv[3];
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

function get(path) {
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

const server = http.createServer(async (req, res) => {
  req.resume();
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
});
server.listen(port, "127.0.0.1", () => console.log(`listening on ${server.address().port}`));
process.on("SIGTERM", () => process.exit(0));
