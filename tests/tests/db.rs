//! End-to-end: database and cache client spans and metrics. Real servers
//! from Debian's packages (redis-server, PostgreSQL, memcached) started by
//! the tests, real unmodified clients (redis-py, psycopg, asyncpg,
//! pymemcache), the real agent and kernel programs, and a real OTLP
//! receiver. Needs root; see `sonde_tests::agent::skip_reason`.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, Stdio},
    time::Duration,
};

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use sonde_tests::{
    OtlpReceiver, ReceivedSpan,
    agent::{Agent, config_file},
    apps::{Server, app_path, curl},
    db_servers::{DbServer, Kind},
    require_e2e,
};

const WAIT: Duration = Duration::from_secs(30);
/// After the expected spans arrived, how long to keep watching for extra ones.
const SETTLE: Duration = Duration::from_millis(1500);
/// The value every client writes as a key, a value and a SQL literal: it
/// must never be exported.
const SECRET: &str = "4111111111111111";

/// A `tests/apps/db_client.py` scenario, started and waiting for `go`.
struct Client {
    child: Child,
    stdin: ChildStdin,
}

impl Client {
    /// `db_client.js` for the Node.js scenarios (`node-*`, `ioredis`),
    /// `db_client.py` for the others.
    fn start(scenario: &str, port: u16) -> Self {
        let (program, app) = if scenario.starts_with("node-") || scenario == "ioredis" {
            ("node", "db_client.js")
        } else {
            ("python3", "db_client.py")
        };
        let mut child = Command::new(program)
            .arg(app_path(app))
            .args([scenario, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting db_client.py {scenario}: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped stdout"))
            .read_line(&mut line)
            .expect("reading ready");
        assert_eq!(line.trim(), "ready", "{scenario}");
        Self { child, stdin }
    }

    fn run(mut self) {
        writeln!(self.stdin, "go").expect("go");
        let status = self.child.wait().expect("client exit");
        assert!(status.success(), "client failed: {status}");
    }
}

/// Runs `scenario` against `server` with an agent selecting the client,
/// and returns the client's spans once `expected` (`db.query.text`, how
/// many) all arrived, and a while after for extra ones.
async fn client_spans(
    scenario: &str,
    server: &DbServer,
    expected: &[(&str, usize)],
) -> Vec<ReceivedSpan> {
    let receiver = OtlpReceiver::start().await;
    let client = Client::start(scenario, server.port);
    let pid = client.child.id();
    let agent = Agent::start(
        &["--pid", &pid.to_string()],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    agent.wait_instrumented(&[pid], WAIT);
    client.run();
    receiver
        .wait_for(
            |spans| {
                let ours: Vec<ReceivedSpan> =
                    spans.iter().filter(|s| s.pid() == pid).cloned().collect();
                let counts = count_by_text(&ours);
                expected
                    .iter()
                    .all(|(text, n)| counts.get(*text).is_some_and(|c| c >= n))
            },
            WAIT,
        )
        .await;
    tokio::time::sleep(SETTLE).await;
    let spans: Vec<ReceivedSpan> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.pid() == pid)
        .collect();
    let log = agent.plain_log();
    assert!(!log.contains("panicked"), "{log}");
    for span in &spans {
        assert_eq!(span.kind, SpanKind::Client, "{span:#?}");
        assert_eq!(span.int_attr("server.port"), i64::from(server.port));
        assert_eq!(span.str_attr("server.address"), "127.0.0.1");
        let text = format!("{span:?}");
        assert!(!text.contains(SECRET), "a value was exported: {span:#?}");
    }
    spans
}

/// `(db.query.text, db.response.status_code)` of each span, in start order.
fn texts(spans: &[ReceivedSpan]) -> Vec<(String, Option<String>)> {
    let mut sorted: Vec<&ReceivedSpan> = spans.iter().collect();
    sorted.sort_by_key(|s| s.start_unix_ns);
    sorted
        .iter()
        .map(|s| {
            let code = s
                .attributes
                .get("db.response.status_code")
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            (s.str_attr("db.query.text").to_owned(), code)
        })
        .collect()
}

fn count_by_text(spans: &[ReceivedSpan]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for span in spans {
        let text = span
            .attributes
            .get("db.query.text")
            .and_then(|v| v.as_str());
        *counts
            .entry(text.unwrap_or_default().to_owned())
            .or_insert(0) += 1;
    }
    counts
}

fn assert_error(span: &ReceivedSpan, code: &str) {
    assert_eq!(span.status_code, StatusCode::Error, "{span:#?}");
    assert_eq!(span.str_attr("db.response.status_code"), code);
    assert_eq!(span.str_attr("error.type"), code);
}

/// redis-py over RESP2 and RESP3: commands with their arguments as `?`,
/// an error with its prefix, a pipeline and a MULTI/EXEC as one span per
/// command, and 1,000 GETs on one connection all reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_commands_pipelines_errors() {
    require_e2e!();
    let server = DbServer::start(Kind::Redis);
    let spans = client_spans("redis-py", &server, &[("GET ?", 2 + 2 + 1000)]).await;
    let counts = count_by_text(&spans);
    for span in &spans {
        assert_eq!(span.str_attr("db.system.name"), "redis");
        assert_eq!(span.name, span.str_attr("db.operation.name"), "{span:#?}");
    }
    assert_eq!(counts.get("GET ?"), Some(&(2 + 2 + 1000)), "{counts:#?}");
    assert_eq!(counts.get("LPUSH ? ?"), Some(&2), "{counts:#?}");
    assert_eq!(counts.get("MULTI"), Some(&2), "{counts:#?}");
    assert_eq!(counts.get("EXEC"), Some(&2), "{counts:#?}");
    assert_eq!(counts.get("INCRBY ? ?"), Some(&4), "{counts:#?}");
    // RESP3 starts with `HELLO 3`.
    assert!(counts.contains_key("HELLO ?"), "{counts:#?}");
    let wrongtype: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.str_attr("db.query.text") == "LPUSH ? ?")
        .collect();
    for span in wrongtype {
        assert_error(span, "WRONGTYPE");
    }
    let ok = spans
        .iter()
        .filter(|s| s.str_attr("db.query.text") == "GET ?")
        .all(|s| s.status_code == StatusCode::Unset);
    assert!(ok, "GETs succeed");
}

/// psycopg 3 (libpq) and asyncpg: sanitized query text, statements
/// prepared once and executed by name resolved to their query, errors with
/// their SQLSTATE, a pipeline as one span per query, 1,000 queries on one
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_psycopg_and_asyncpg() {
    require_e2e!();
    let server = DbServer::start(Kind::Postgres);
    let spans = client_spans(
        "psycopg",
        &server,
        &[
            ("SELECT $1::int", 1000),
            ("DELETE FROM orders WHERE id = ?", 1),
        ],
    )
    .await;
    let counts = count_by_text(&spans);
    let select = "SELECT note FROM orders WHERE id = $1";
    assert_eq!(counts.get(select), Some(&3), "{counts:#?}");
    assert_eq!(counts.get("SELECT $1::int"), Some(&1000), "{counts:#?}");
    assert_eq!(
        counts.get("INSERT INTO orders VALUES (?, ?)"),
        Some(&1),
        "{counts:#?}"
    );
    for text in [
        "SELECT count(*) FROM orders",
        "UPDATE orders SET note = $1 WHERE id = $2",
        "DELETE FROM orders WHERE id = ?",
    ] {
        assert_eq!(counts.get(text), Some(&1), "{text}: {counts:#?}");
    }
    let by_text = |text: &str| {
        spans
            .iter()
            .find(|s| s.str_attr("db.query.text") == text)
            .unwrap_or_else(|| panic!("{text}"))
    };
    assert_error(by_text("SELECT ?/?"), "22012");
    let prepared = by_text(select);
    assert_eq!(prepared.name, "SELECT orders");
    assert_eq!(prepared.str_attr("db.query.summary"), "SELECT orders");
    assert_eq!(prepared.str_attr("db.collection.name"), "orders");
    assert_eq!(prepared.str_attr("db.operation.name"), "SELECT");
    assert_eq!(prepared.str_attr("db.namespace"), "postgres");
    assert_eq!(prepared.str_attr("db.system.name"), "postgresql");

    let spans = client_spans("asyncpg", &server, &[("SELECT * FROM missing_table", 1)]).await;
    assert_eq!(
        texts(&spans),
        vec![
            ("SELECT id FROM orders WHERE id = $1".to_owned(), None),
            ("SELECT id FROM orders WHERE id = $1".to_owned(), None),
            ("SELECT id FROM orders WHERE id = $1".to_owned(), None),
            (
                "SELECT * FROM missing_table".to_owned(),
                Some("42P01".to_owned())
            ),
        ]
    );
}

/// Node.js clients: `pg` (a named statement executed by name three times,
/// an error) and `ioredis` (a pipeline, an error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pg_and_ioredis() {
    require_e2e!();
    let pg = DbServer::start(Kind::Postgres);
    let spans = client_spans("node-pg", &pg, &[("SELECT * FROM missing_table", 1)]).await;
    let counts = count_by_text(&spans);
    assert_eq!(
        counts.get("SELECT note FROM orders WHERE id = $1"),
        Some(&3),
        "{counts:#?}"
    );
    assert_eq!(
        counts.get("SELECT count(*) FROM orders WHERE note = ?"),
        Some(&1),
        "{counts:#?}"
    );
    let missing = spans
        .iter()
        .find(|s| s.str_attr("db.query.text") == "SELECT * FROM missing_table")
        .expect("the failed query");
    assert_error(missing, "42P01");

    let redis = DbServer::start(Kind::Redis);
    let spans = client_spans("ioredis", &redis, &[("LPUSH ? ?", 1)]).await;
    let counts = count_by_text(&spans);
    for (text, n) in [
        ("SET ? ?", 2),
        ("GET ?", 2),
        ("INCR ?", 1),
        ("LPUSH ? ?", 1),
    ] {
        assert_eq!(counts.get(text), Some(&n), "{text}: {counts:#?}");
    }
    let lpush = spans
        .iter()
        .find(|s| s.str_attr("db.query.text") == "LPUSH ? ?")
        .expect("LPUSH");
    assert_error(lpush, "WRONGTYPE");
}

/// PyMySQL against MariaDB: `db.system.name` `mariadb` from the greeting,
/// the database `COM_INIT_DB` selected as `db.namespace`, literals
/// sanitized, an ERR packet's number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_pymysql() {
    require_e2e!();
    let server = DbServer::start(Kind::Mariadb);
    let spans = client_spans("pymysql", &server, &[("SELECT * FROM missing_table", 1)]).await;
    let by_text = |text: &str| {
        spans
            .iter()
            .find(|s| s.str_attr("db.query.text") == text)
            .unwrap_or_else(|| panic!("{text}: {spans:#?}"))
    };
    let insert = by_text("INSERT INTO orders VALUES (?, ?)");
    assert_eq!(insert.str_attr("db.system.name"), "mariadb");
    assert_eq!(insert.str_attr("db.namespace"), "shop");
    assert_eq!(insert.name, "INSERT orders");
    let select = by_text("SELECT note FROM orders WHERE id = ?");
    assert_eq!(select.str_attr("db.collection.name"), "orders");
    assert_error(by_text("SELECT * FROM missing_table"), "1146");
}

/// Node's `mysql2` against MariaDB, with server-side prepared statements:
/// each `COM_STMT_EXECUTE` is reported with the query its statement id was
/// prepared from, the binary parameters never read; a prepare that fails
/// is an error span with the ERR packet's number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_node_mysql2_prepared_statements() {
    require_e2e!();
    let server = DbServer::start(Kind::Mariadb);
    let select = "SELECT note FROM orders WHERE id = ?";
    let missing = "SELECT id FROM missing_table WHERE id = ?";
    let spans = client_spans("node-mysql2", &server, &[(select, 3), (missing, 1)]).await;
    let counts = count_by_text(&spans);
    // Prepared once (mysql2 caches the statement per connection),
    // executed three times: a prepare that succeeds is no operation.
    assert_eq!(counts.get(select), Some(&3), "{counts:#?}");
    assert_eq!(
        counts.get("INSERT INTO orders VALUES (?, ?)"),
        Some(&1),
        "{counts:#?}"
    );
    for span in spans
        .iter()
        .filter(|s| s.str_attr("db.query.text") == select)
    {
        assert_eq!(span.str_attr("db.system.name"), "mariadb");
        assert_eq!(span.str_attr("db.namespace"), "shop");
        assert_eq!(span.str_attr("db.collection.name"), "orders");
        assert_eq!(span.name, "SELECT orders");
        assert_eq!(span.status_code, StatusCode::Unset, "{span:#?}");
    }
    let failed: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.str_attr("db.query.text") == missing)
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "only the prepare, never executed: {failed:#?}"
    );
    assert_error(failed[0], "1146");
}

/// pymemcache: commands with their arguments as `?`, an unknown command
/// as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_text_protocol() {
    require_e2e!();
    let server = DbServer::start(Kind::Memcached);
    let spans = client_spans("pymemcache", &server, &[("bogus", 1)]).await;
    assert_eq!(
        texts(&spans),
        vec![
            ("set ? ? ? ?".to_owned(), None),
            ("get ?".to_owned(), None),
            ("get ? ?".to_owned(), None),
            ("incr ? ?".to_owned(), None),
            ("bogus".to_owned(), Some("ERROR".to_owned())),
        ]
    );
}

/// A web request whose handler opens a PostgreSQL connection and runs two
/// queries: the database spans are children of its server span, in its
/// trace; `db.client.operation.duration` has them with the conventions'
/// buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_children_of_the_request_that_made_them() {
    require_e2e!();
    let pg = DbServer::start(Kind::Postgres);
    let receiver = OtlpReceiver::start().await;
    let web = Server::start(
        "python3",
        &[
            app_path("db_web.py").to_str().expect("utf-8 path"),
            &pg.port.to_string(),
        ],
    );
    let config = config_file("db-web", "metrics:\n  export_interval_secs: 1\n");
    let agent = Agent::start(
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--pid",
            &web.pid().to_string(),
        ],
        &receiver.grpc_endpoint(),
        "grpc",
    );
    agent.wait_instrumented(&[web.pid()], WAIT);
    curl(&["-o", "/dev/null", &web.url("/orders")]);
    receiver.wait_for(|spans| spans.len() >= 3, WAIT).await;
    tokio::time::sleep(SETTLE).await;
    let spans: Vec<ReceivedSpan> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.pid() == web.pid())
        .collect();
    let server: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server)
        .collect();
    assert_eq!(server.len(), 1, "{spans:#?}");
    let server = server[0];
    let queries: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.attributes.contains_key("db.system.name"))
        .collect();
    assert_eq!(queries.len(), 2, "{spans:#?}");
    for query in &queries {
        assert_eq!(query.trace_id, server.trace_id, "{query:#?}");
        assert_eq!(query.parent_span_id, server.span_id, "{query:#?}");
        assert!(
            query.start_unix_ns >= server.start_unix_ns && query.end_unix_ns <= server.end_unix_ns
        );
    }
    let mut names: Vec<&str> = queries.iter().map(|q| q.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["CREATE", "SELECT items"]);
    let histograms = receiver
        .wait_for_histograms(
            |h| h.iter().any(|h| h.name == "db.client.operation.duration"),
            WAIT,
        )
        .await;
    let db: Vec<_> = histograms
        .iter()
        .filter(|h| h.name == "db.client.operation.duration")
        .collect();
    let select = db
        .iter()
        .rev()
        .find(|h| {
            h.attributes
                .get("db.collection.name")
                .and_then(|v| v.as_str())
                == Some("items")
        })
        .unwrap_or_else(|| panic!("{db:#?}"));
    assert_eq!(select.count, 1);
    assert_eq!(
        select.explicit_bounds,
        [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]
    );
    assert_eq!(select.unit, "s");
}
