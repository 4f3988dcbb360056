// Node.js HTTP service for trace-context tests: GET /work calls every
// downstream URL in turn (argv[3..]), then answers 200. Event loop, no
// tracing code. Prints "listening on <port>" once ready.
const http = require("http");

const port = Number(process.argv[2] || 0);
const downstream = process.argv.slice(3);

function get(url) {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false }, (res) => {
        res.resume();
        res.on("end", resolve);
      })
      .on("error", reject);
  });
}

const server = http.createServer(async (req, res) => {
  req.resume();
  try {
    for (const url of downstream) {
      await get(url);
    }
    res.writeHead(200, { "Content-Type": "text/plain" });
    res.end("done\n");
  } catch (err) {
    res.writeHead(502);
    res.end(String(err));
  }
});
server.listen(port, "0.0.0.0", () => console.log(`listening on ${server.address().port}`));
process.on("SIGTERM", () => process.exit(0));
