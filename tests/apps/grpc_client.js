// @grpc/grpc-js test client, unmodified by any tracing; the same calls as
// grpc_client.py.
//
// usage: node grpc_client.js PORT suite
//        node grpc_client.js PORT concurrent N
//
// `suite` prints one line per call: `<method> <status name> <detail>`.
const grpc = require("@grpc/grpc-js");
const { service } = require("./grpc_service");

const TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const statusName = (code) => Object.keys(grpc.status).find((k) => grpc.status[k] === code);

function report(method, promise) {
  return promise.then(
    (detail) => console.log(method, "OK", detail),
    (error) => console.log(method, statusName(error.code), "-"),
  );
}

function unary(client, request, options = {}, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) =>
    client.Unary(Buffer.from(request), metadata, options, (error, reply) =>
      error ? reject(error) : resolve(reply.length),
    ),
  );
}

async function suite(client) {
  const metadata = new grpc.Metadata();
  metadata.set("traceparent", TRACEPARENT);
  await report("Unary", unary(client, "ok", {}, metadata));
  await report("Unary", unary(client, "code=5"));
  await report("Unary", unary(client, "sleep=1", { deadline: Date.now() + 200 }));
  await report(
    "ServerStream",
    new Promise((resolve, reject) => {
      let count = 0;
      const call = client.ServerStream(Buffer.from("count=3"));
      call.on("data", () => count++);
      call.on("end", () => resolve(count));
      call.on("error", reject);
    }),
  );
  await report(
    "ClientStream",
    new Promise((resolve, reject) => {
      const call = client.ClientStream((error, reply) => (error ? reject(error) : resolve(reply.toString())));
      for (const message of ["a", "b", "c", "d"]) {
        call.write(Buffer.from(message));
      }
      call.end();
    }),
  );
}

async function concurrent(client, n) {
  const replies = await Promise.all(
    Array.from({ length: n }, (_, i) => unary(client, `call ${i}`).then((length) => length > 0)),
  );
  console.log("concurrent", replies.filter(Boolean).length);
}

async function main() {
  const [port, action, n] = process.argv.slice(2);
  const Client = grpc.makeGenericClientConstructor(service, "Echo");
  const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  if (action === "suite") {
    await suite(client);
  } else if (action === "concurrent") {
    await concurrent(client, Number(n));
  } else {
    throw new Error(`unknown action ${action}`);
  }
  client.close();
}

main();
