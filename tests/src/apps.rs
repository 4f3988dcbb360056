//! Real, unmodified programs the tests instrument: servers started from
//! `tests/apps/`, and helpers to talk to them, a steady client load among
//! them.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
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
        let mut stdout = child.stdout.take().expect("piped stdout");
        let port = listening_port(&mut stdout, &format!("{program} {args:?}"));
        Self { child, port }
    }

    /// The Python threaded HTTP server (`tests/apps/http_server.py`).
    pub fn python_http() -> Self {
        Self::start(
            "python3",
            &[app_path("http_server.py").to_str().expect("utf-8 path")],
        )
    }

    /// The same Python server serving HTTPS with `cert` (its `ssl` module:
    /// the system's OpenSSL).
    pub fn python_https(cert: &Certificate) -> Self {
        Self::start(
            "python3",
            &[
                app_path("http_server.py").to_str().expect("utf-8 path"),
                "--cert",
                &cert.cert(),
                "--key",
                &cert.key(),
            ],
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

/// Reads a server's `listening on <port>` line.
fn listening_port(stdout: &mut ChildStdout, server: &str) -> u16 {
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading server output");
    line.trim()
        .strip_prefix("listening on ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{server} printed {line:?}"))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A program whose process exists before it runs: `sh` waits for a line on
/// stdin, then execs the program under the same pid. A test gives the pid
/// to the agent first, so even what the program does at once is traced (a
/// process started later is selected only once the agent has handled its
/// exec event, which races its first request).
pub struct Held {
    child: Child,
    program: String,
}

impl Held {
    /// Starts `sh`, holding `program args...`.
    pub fn new(program: &str, args: &[&str]) -> Self {
        let child = Command::new("sh")
            .args(["-c", r#"read go && exec "$@""#, "sh", program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting sh for {program}: {e}"));
        Self {
            child,
            program: program.to_owned(),
        }
    }

    /// Its process id, the program's once released.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn release(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin
            .write_all(b"go\n")
            .expect("releasing the held program");
    }

    /// Runs the program to completion; returns its stdout, panicking if it
    /// failed.
    pub fn run(mut self) -> String {
        self.release();
        let mut output = String::new();
        self.child
            .stdout
            .take()
            .expect("piped stdout")
            .read_to_string(&mut output)
            .expect("reading the held program's output");
        let status = self.child.wait().expect("waiting for the held program");
        assert!(status.success(), "{} failed: {status}", self.program);
        output
    }

    /// Releases a server; returns the port of its `listening on` line.
    pub fn run_server(&mut self) -> u16 {
        self.release();
        let stdout = self.child.stdout.as_mut().expect("piped stdout");
        listening_port(stdout, &self.program)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for `127.0.0.1` and `localhost` with its key,
/// made by `openssl req` in a directory of its own (removed on drop).
pub struct Certificate {
    /// The directory: free for the test's other files too.
    pub dir: PathBuf,
}

impl Certificate {
    /// Generates one; `name` tells tests' directories apart.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sonde-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("certificate directory");
        let status = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stderr(Stdio::null())
            .status()
            .expect("running openssl");
        assert!(status.success(), "openssl req failed");
        Self { dir }
    }

    /// The certificate (PEM).
    pub fn cert(&self) -> String {
        path_str(&self.dir.join("cert.pem"))
    }

    /// Its private key (PEM).
    pub fn key(&self) -> String {
        path_str(&self.dir.join("key.pem"))
    }
}

impl Drop for Certificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}

/// Sends `count` GETs of `path` on one keep-alive connection.
pub fn get_many(server: &Server, path: &str, count: usize) {
    let url = server.url(path);
    let mut args = Vec::new();
    for _ in 0..count {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    curl(&args);
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

/// One request of a [`SteadyLoad`].
#[derive(Clone, Debug)]
pub struct LoadRequest {
    /// Its number, in the order the requests were sent (the path ends in it).
    pub seq: u64,
    /// When its answer was read (or it failed).
    pub done: Instant,
    /// Why it failed: not sent, no answer, or not `200 ok`.
    pub error: Option<String>,
}

/// A steady client load on a server while a test does other things:
/// `GET <prefix>/<seq>` every `period` from each of two clients, one on a
/// keep-alive connection (opened again only after a failure), the other
/// with a new connection per request, each answer read and checked as
/// `http_server.py` gives it.
pub struct SteadyLoad {
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
    clients: Vec<JoinHandle<Vec<LoadRequest>>>,
}

/// How long a load request may wait for its answer before it fails.
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

impl SteadyLoad {
    /// Starts both clients on 127.0.0.1:`port`.
    pub fn start(port: u16, prefix: &str, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let clients = [true, false]
            .into_iter()
            .map(|keep_alive| {
                let (stop, next, prefix) =
                    (Arc::clone(&stop), Arc::clone(&next), prefix.to_owned());
                std::thread::spawn(move || {
                    let mut requests = Vec::new();
                    let mut connection = None;
                    while !stop.load(Ordering::Relaxed) {
                        let seq = next.fetch_add(1, Ordering::SeqCst);
                        let path = format!("{prefix}/{seq}");
                        let result = match connection.take() {
                            Some(open) => Ok(open),
                            None => connect(port),
                        }
                        .and_then(|mut open| {
                            load_get(&mut open, port, &path, keep_alive).map(|()| open)
                        });
                        let error = match result {
                            Ok(open) => {
                                connection = keep_alive.then_some(open);
                                None
                            }
                            Err(error) => Some(error),
                        };
                        requests.push(LoadRequest {
                            seq,
                            done: Instant::now(),
                            error,
                        });
                        std::thread::sleep(period);
                    }
                    requests
                })
            })
            .collect();
        Self {
            stop,
            next,
            clients,
        }
    }

    /// The number of the next request: every request numbered this or
    /// more is sent after this call.
    pub fn next_seq(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    /// Stops the clients; every request they made, in `seq` order.
    pub fn stop(self) -> Vec<LoadRequest> {
        self.stop.store(true, Ordering::Relaxed);
        let mut requests: Vec<LoadRequest> = self
            .clients
            .into_iter()
            .flat_map(|client| client.join().expect("load client panicked"))
            .collect();
        requests.sort_by_key(|request| request.seq);
        requests
    }
}

fn connect(port: u16) -> Result<BufReader<TcpStream>, String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(LOAD_TIMEOUT))
        .map_err(|e| format!("set timeout: {e}"))?;
    Ok(BufReader::new(stream))
}

/// One `GET path` on `connection`, its answer read whole: `200` and `ok\n`.
fn load_get(
    connection: &mut BufReader<TcpStream>,
    port: u16,
    path: &str,
    keep_alive: bool,
) -> Result<(), String> {
    let close = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{close}\r\n");
    connection
        .get_mut()
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    connection
        .read_line(&mut line)
        .map_err(|e| format!("status line: {e}"))?;
    if !line.starts_with("HTTP/1.1 200 ") {
        return Err(format!("status line {line:?}"));
    }
    let mut length = None;
    loop {
        line.clear();
        match connection.read_line(&mut line) {
            Ok(0) => return Err("closed in the head".to_owned()),
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
            Err(e) => return Err(format!("head: {e}")),
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok();
        }
    }
    let mut body = vec![0; length.ok_or("no Content-Length")?];
    connection
        .read_exact(&mut body)
        .map_err(|e| format!("body: {e}"))?;
    if body != b"ok\n" {
        return Err(format!("body {:?}", String::from_utf8_lossy(&body)));
    }
    Ok(())
}

/// nginx in the foreground (`daemon off`), its master and workers, with a
/// prefix directory of its own (logs, pid, temp files; removed on drop).
/// Stopped with SIGQUIT (graceful, its workers too) on drop.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx with one worker and `servers` (`server` and `upstream`
    /// blocks) in its `http` block, and waits until something accepts on
    /// 127.0.0.1:`port`. `name` tells tests' directories apart.
    pub fn start(name: &str, servers: &str, port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("sonde-nginx-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("nginx directory");
        let d = dir.display();
        let config = format!(
            "worker_processes 1;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{}}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    {servers}
}}
"
        );
        let config_path = dir.join("nginx.conf");
        std::fs::write(&config_path, config).expect("nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&config_path)
            .args(["-g", "daemon off;"])
            .spawn()
            .expect("starting nginx");
        let nginx = Self { child, dir };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "nginx does not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        nginx
    }

    /// The master's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
