//! Resources, spans and call records for unit tests: one place that knows
//! how to fill them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{
    conn::tracker::ConnTracker,
    model::{
        call::{Call, ConnInfo, Detail, HttpVersion, Outcome, RequestInfo, Side},
        span::{AttributeValue, Resource, Span, SpanKind, SpanStatus},
    },
    probes::decode::{SocketClose, SocketData},
};

/// A process resource with `service.name` first, then `process.pid`.
pub(crate) fn resource(key: &str, service: &str) -> Arc<Resource> {
    Arc::new(Resource {
        key: key.to_owned(),
        service_name: service.to_owned(),
        attributes: vec![
            ("service.name".to_owned(), AttributeValue::from(service)),
            ("process.pid".to_owned(), AttributeValue::Int(42)),
        ],
    })
}

/// A sampled root SERVER span of 12.345678 ms with the W3C example ids.
pub(crate) fn span(resource: &Arc<Resource>, name: &str) -> Span {
    Span {
        resource: Arc::clone(resource),
        trace_id: [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36,
        ],
        span_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
        parent_span_id: None,
        trace_flags: 1,
        trace_state: None,
        kind: SpanKind::Server,
        name: name.to_owned(),
        start_unix_ns: 1_000_000_000,
        end_unix_ns: 1_012_345_678,
        attributes: Vec::new(),
        status: SpanStatus::Unset,
    }
}

/// A finished HTTP/1.1 call to `api.local:8080` from `127.0.0.1:50000`,
/// as the connection tracker would record it.
pub(crate) fn http_call(side: Side, method: &str, target: &str, outcome: Outcome) -> Call {
    Call {
        conn: ConnInfo {
            pid: 10,
            socket_cookie: 1,
            local: "127.0.0.1:8080".parse().expect("an address"),
            remote: "127.0.0.1:50000".parse().expect("an address"),
            side,
            tls: false,
        },
        detail: Detail::Http(RequestInfo {
            method: method.into(),
            target: target.into(),
            version: HttpVersion::Http11,
            host: Some("api.local:8080".into()),
            user_agent: Some("curl/8".into()),
            traceparent: None,
            tracestate: None,
        }),
        outcome,
        start_ns: 0,
        end_ns: 0,
        request_tid: 10,
        response_tid: Some(10),
        trace: None,
    }
}

impl Call {
    /// The HTTP request of an HTTP or gRPC call (panics on others: tests
    /// know what they recorded).
    pub(crate) fn request(&self) -> &RequestInfo {
        self.detail
            .http_request()
            .unwrap_or_else(|| panic!("not an HTTP call: {self:?}"))
    }
}

/// The tracker's entry points returning the calls they finish, as tests
/// read them (the agent passes one vector through a whole batch).
pub(crate) trait FinishedCalls {
    /// [`ConnTracker::on_data`].
    fn data(&mut self, ev: &SocketData) -> Vec<Call>;
    /// [`ConnTracker::on_close`].
    fn close(&mut self, ev: &SocketClose) -> Vec<Call>;
    /// [`ConnTracker::on_tick`].
    fn tick(&mut self, now_ns: u64) -> Vec<Call>;
    /// [`ConnTracker::forget_pid`].
    fn forget(&mut self, pid: u32) -> Vec<Call>;
}

impl FinishedCalls for ConnTracker {
    fn data(&mut self, ev: &SocketData) -> Vec<Call> {
        let mut out = Vec::new();
        self.on_data(ev, &mut out);
        out
    }

    fn close(&mut self, ev: &SocketClose) -> Vec<Call> {
        let mut out = Vec::new();
        self.on_close(ev, &mut out);
        out
    }

    fn tick(&mut self, now_ns: u64) -> Vec<Call> {
        let mut out = Vec::new();
        self.on_tick(now_ns, &mut out);
        out
    }

    fn forget(&mut self, pid: u32) -> Vec<Call> {
        let mut out = Vec::new();
        self.forget_pid(pid, &mut out);
        out
    }
}

/// A fresh directory under the temp dir (named after the test and the
/// process), removed when dropped.
pub(crate) struct TestDir(PathBuf);

impl TestDir {
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sonde-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// The names of the files in the directory, sorted.
    pub(crate) fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
