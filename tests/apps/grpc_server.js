// @grpc/grpc-js test server, unmodified by any tracing: `sonde.test.Echo`
// with raw bytes as messages (no .proto), the same behaviour as
// grpc_server.py: Unary echoes (`sleep=<s>` sleeps first, `code=<n>` fails
// with status n), ServerStream sends `count=<n>` messages, ClientStream
// answers how many it got. Prints "listening on <port>" once ready.
const grpc = require("@grpc/grpc-js");
const { service } = require("./grpc_service");

function parse(buffer) {
  const [key, value] = buffer.toString().split("=");
  return { key, value };
}

const server = new grpc.Server();
server.addService(service, {
  Unary(call, callback) {
    const { key, value } = parse(call.request);
    if (key === "code") {
      callback({ code: Number(value), details: "requested" });
    } else if (key === "sleep") {
      setTimeout(() => callback(null, call.request), Number(value) * 1000);
    } else {
      callback(null, call.request);
    }
  },
  ServerStream(call) {
    const count = Number(parse(call.request).value || 1);
    for (let i = 0; i < count; i++) {
      call.write(Buffer.from(`message ${i}`));
    }
    call.end();
  },
  ClientStream(call, callback) {
    let count = 0;
    call.on("data", () => count++);
    call.on("end", () => callback(null, Buffer.from(`got ${count}`)));
  },
});
const port = Number(process.argv[2] || 0);
server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (error, bound) => {
  if (error) {
    throw error;
  }
  console.log(`listening on ${bound}`);
});
process.on("SIGTERM", () => server.tryShutdown(() => process.exit(0)));
