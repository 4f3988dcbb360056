//! Real, unmodified programs the tests instrument: servers started from
//! `tests/apps/`, and helpers to talk to them.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// Path of a file in `tests/apps/`.
pub fn app_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("apps")
        .join(name)
}

/// A server process that printed `listening on <port>`.
pub struct Server {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Server {
    /// Starts `program args...` and waits for its `listening on` line.
    pub fn start(program: &str, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program} {args:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading server output");
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{program} {args:?} printed {line:?}"));
        Self { child, port }
    }

    /// The Python threaded HTTP server (`tests/apps/http_server.py`).
    pub fn python_http() -> Self {
        Self::start(
            "python3",
            &[app_path("http_server.py").to_str().expect("utf-8 path")],
        )
    }

    /// The Node.js HTTP server (`tests/apps/http_server.js`).
    pub fn node_http() -> Self {
        Self::start(
            "node",
            &[app_path("http_server.js").to_str().expect("utf-8 path")],
        )
    }

    /// The Node.js h2c server (`tests/apps/h2c_server.js`): HTTP/2 with
    /// prior knowledge, no TLS.
    pub fn node_h2c() -> Self {
        Self::start(
            "node",
            &[app_path("h2c_server.js").to_str().expect("utf-8 path")],
        )
    }

    /// The grpcio gRPC server (`tests/apps/grpc_server.py`).
    pub fn python_grpc() -> Self {
        Self::start(
            "python3",
            &[app_path("grpc_server.py").to_str().expect("utf-8 path")],
        )
    }

    /// The @grpc/grpc-js gRPC server (`tests/apps/grpc_server.js`).
    pub fn node_grpc() -> Self {
        Self::start(
            "node",
            &[app_path("grpc_server.js").to_str().expect("utf-8 path")],
        )
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs curl with `args` and returns its stdout; panics if curl fails.
pub fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .arg("-sS")
        .args(args)
        .output()
        .expect("running curl");
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Sends raw bytes to 127.0.0.1:`port`, half-closes, and returns every
/// byte the server sent back before closing (or within `timeout`).
pub fn raw_exchange(port: u16, request: &[u8], timeout: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(timeout)).expect("set timeout");
    stream.write_all(request).expect("send");
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    reply
}
