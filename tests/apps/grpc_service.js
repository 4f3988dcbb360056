// The `sonde.test.Echo` service for the @grpc/grpc-js test programs, with
// raw bytes as messages so that no .proto or code generation is needed.
const identity = (buffer) => buffer;

function method(name, requestStream, responseStream) {
  return {
    path: `/sonde.test.Echo/${name}`,
    requestStream,
    responseStream,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  };
}

exports.service = {
  Unary: method("Unary", false, false),
  ServerStream: method("ServerStream", false, true),
  ClientStream: method("ClientStream", true, false),
};
