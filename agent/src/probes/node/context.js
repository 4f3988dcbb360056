// Sonde: which request each outgoing HTTP request of this Node.js process
// is made for. Evaluated by the Sonde agent through the inspector (see
// agent/src/probes/node/mod.rs); `uninstall()` undoes every change.
//
// A served request gets a number (its token) when it starts; the token
// follows the work the request's handlers start (AsyncLocalStorage: across
// promises, timers, callbacks), each client request takes the token of the
// work that creates it, and while that request is written on its socket
// the kernel is told which token the write is for: 0 for one made outside
// any request (a timer's, a background job's), which then gets no parent
// rather than the thread's guess. The messages reach the
// agent's probe on libuv's `uv_os_getenv` as the names of environment
// variables that are looked up and never set:
//   "__sonde_s" + fd + token   request `token` came in on socket `fd`
//   "__sonde_b" + token        a write for request `token` begins
//   "__sonde_e"                that write ended
// (numbers as 8 hex digits).
(() => {
  const key = Symbol.for("sonde.node-context");
  if (globalThis[key]) return "present";
  const channels = require("diagnostics_channel");
  const { AsyncLocalStorage } = require("async_hooks");
  const net = require("net");
  const storage = new AsyncLocalStorage();
  const tokenOf = Symbol("sonde.token");
  const pendingOf = Symbol("sonde.pending");
  const inFlightOf = Symbol("sonde.in-flight");
  const env = process.env;
  const hex = (n) => (n >>> 0).toString(16).padStart(8, "0");
  let lastToken = 0;
  // Cleared by uninstall(): a wrapper that cannot be taken out (something
  // wrapped it since) passes everything through.
  let active = true;

  // A request the server starts: a new token, in the work of the parser
  // that read it (so its handler, its body's events and what they start
  // carry it), unless the socket has another request whose response is
  // not done (pipelining): the kernel knows one request per connection.
  function serverRequest({ socket, response }) {
    const fd = socket?._handle?.fd;
    const pipelined = (socket[inFlightOf] = (socket[inFlightOf] || 0) + 1) > 1;
    response.once("close", () => socket[inFlightOf]--);
    if (pipelined || !(fd >= 0)) {
      storage.enterWith(0);
      return;
    }
    lastToken = (lastToken + 1) >>> 0 || 1;
    env["__sonde_s" + hex(fd) + hex(lastToken)];
    storage.enterWith(lastToken);
  }
  // A client request takes the token of the work creating it.
  function takeToken(request) {
    const token = storage.getStore();
    if (token && !request[tokenOf]) request[tokenOf] = token;
  }
  const clientRequest = ({ request }) => takeToken(request);
  // undici (fetch) writes a request's head right after this, on `socket`.
  function undiciHeaders({ request, socket }) {
    socket[pendingOf] = request[tokenOf] || 0;
  }
  const subscriptions = [
    ["http.server.request.start", serverRequest],
    ["undici:request:create", clientRequest],
    ["undici:client:sendHeaders", undiciHeaders],
  ];
  for (const [name, handler] of subscriptions) channels.subscribe(name, handler);

  // Methods wrapped: [object, name, original, wrapper].
  const patches = [];
  function wrap(target, name, make) {
    const original = target[name];
    const wrapper = make(original);
    target[name] = wrapper;
    patches.push([target, name, original, wrapper]);
  }
  // An http(s) ClientRequest hands itself to its agent (or, without one,
  // takes its socket) in its constructor, in the work creating it: it
  // takes the token then (a request queued for a busy pool gets its
  // socket later, in the work of another request's end).
  const http = require("http");
  wrap(http.Agent.prototype, "addRequest", (original) =>
    function addRequest(request, ...rest) {
      takeToken(request);
      return original.call(this, request, ...rest);
    });
  wrap(http.ClientRequest.prototype, "onSocket", (original) =>
    function onSocket(...args) {
      takeToken(this);
      return original.apply(this, args);
    });
  // The token a write on `socket` is for: a client request's (0 if it
  // has none), undefined if the write is no client request's.
  function writeToken(socket) {
    const message = socket._httpMessage;
    if (message instanceof http.ClientRequest) return message[tokenOf] || 0;
    const pending = socket[pendingOf];
    socket[pendingOf] = undefined;
    return pending;
  }
  // Every write on a TCP (or TLS) socket: one of a client request is
  // bracketed for the kernel.
  wrap(net.Socket.prototype, "_writeGeneric", (original) =>
    function writeGeneric(...args) {
      const token = active ? writeToken(this) : undefined;
      if (token === undefined) return original.apply(this, args);
      env["__sonde_b" + hex(token)];
      try {
        return original.apply(this, args);
      } finally {
        env["__sonde_e"];
      }
    });

  globalThis[key] = {
    uninstall() {
      active = false;
      for (const [name, handler] of subscriptions) channels.unsubscribe(name, handler);
      // Each method is restored unless something wrapped it after us;
      // then ours stays, and passes everything through.
      for (const [target, name, original, wrapper] of patches) {
        if (target[name] === wrapper) target[name] = original;
      }
      storage.disable();
      delete globalThis[key];
      return "removed";
    },
  };
  return "installed";
})()
