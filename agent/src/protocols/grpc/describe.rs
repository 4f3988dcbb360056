//! gRPC spans and measurements from call records, per the OpenTelemetry RPC and gRPC semantic
//! conventions: span name `{rpc.method}` (`package.Service/Method`),
//! `rpc.system.name = "grpc"`, `rpc.response.status_code` as the status
//! name. Server spans are errors for `UNKNOWN`, `DEADLINE_EXCEEDED`,
//! `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE` and `DATA_LOSS`; client spans
//! for every code but `OK`. Backends that read the older attributes
//! (`rpc.system`, `rpc.service`, `rpc.method` without the service,
//! `rpc.grpc.status_code` as an integer) get them with
//! [`RpcConventions::Legacy`] or [`RpcConventions::Both`].

use std::{borrow::Cow, time::Duration};

use serde::Deserialize;

use super::parse as grpc;
use crate::{
    model::{
        call::{Call, Outcome, RequestInfo, RpcInfo},
        measure::{Measurement, Protocol, ServerAddress},
        span::{Attribute, AttributeValue, SpanKind, SpanStatus},
    },
    protocols::{
        Description, SpanParts,
        http::{authority, unanswered},
        span_kind,
    },
};

/// `rpc.method` when the method could not be decoded.
const UNKNOWN_METHOD: &str = "_OTHER";
/// The span name when the method could not be decoded.
const UNSPECIFIED_NAME: &str = "grpc";
/// `rpc.system.name` (and the older `rpc.system`).
const SYSTEM: &str = "grpc";

/// Which RPC attribute names gRPC spans carry (`spans.rpc_conventions`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RpcConventions {
    /// `rpc.system.name`, `rpc.method` = `package.Service/Method`,
    /// `rpc.response.status_code` (the status name).
    #[default]
    Current,
    /// `rpc.system`, `rpc.service`, `rpc.method` = `Method`,
    /// `rpc.grpc.status_code` (an integer): conventions before v1.38.
    Legacy,
    /// Both; `rpc.method` keeps its current meaning.
    Both,
}

/// Describes one gRPC call; the span part only when `with_span`. Its
/// measurement follows the current conventions whichever names the span
/// carries.
pub fn describe<'a>(
    call: &'a Call,
    request: &'a RequestInfo,
    rpc: &'a RpcInfo,
    conventions: RpcConventions,
    with_span: bool,
) -> Description<'a> {
    let kind = span_kind(call.conn.side);
    let full_name = rpc.method.as_ref().map(|method| method.full_name());
    let status_name = rpc.status_code.map(grpc::status_name);
    let (host, port) = authority(
        request.host.as_deref(),
        match kind {
            SpanKind::Server => call.conn.local,
            SpanKind::Client => call.conn.remote,
        },
    );
    // (`error.type`, span status message) of a failed call.
    let (error_type, message) = match (rpc.status_code, &status_name, &call.outcome) {
        (Some(code), Some(name), _) => {
            let is_error = match kind {
                SpanKind::Server => grpc::is_server_error(code),
                SpanKind::Client => code != grpc::OK,
            };
            if is_error {
                (Some(name.clone()), Some(Cow::Owned(format!("gRPC {name}"))))
            } else {
                (None, None)
            }
        }
        // A response whose status the agent could not decode.
        (_, _, Outcome::Response { .. }) => (None, None),
        (_, _, outcome) => {
            let (error_type, message) = unanswered(outcome);
            (
                Some(Cow::Borrowed(error_type)),
                Some(Cow::Borrowed(message)),
            )
        }
    };
    let span = with_span.then(|| {
        let mut attributes = Vec::new();
        if conventions != RpcConventions::Legacy {
            attributes.push(Attribute::new(
                "rpc.system.name",
                AttributeValue::fixed(SYSTEM),
            ));
            attributes.push(Attribute::new(
                "rpc.method",
                full_name.as_deref().unwrap_or(UNKNOWN_METHOD),
            ));
            if let Some(name) = &status_name {
                attributes.push(Attribute::new("rpc.response.status_code", name.as_ref()));
            }
        }
        if conventions != RpcConventions::Current {
            attributes.push(Attribute::new("rpc.system", AttributeValue::fixed(SYSTEM)));
            if let Some(method) = &rpc.method {
                attributes.push(Attribute::new("rpc.service", method.service.as_str()));
                if conventions == RpcConventions::Legacy {
                    attributes.push(Attribute::new("rpc.method", method.method.as_str()));
                }
            }
            if let Some(code) = rpc.status_code {
                attributes.push(Attribute::new("rpc.grpc.status_code", i64::from(code)));
            }
        }
        let peer = call.conn.remote;
        let peer_address = AttributeValue::from(peer.ip());
        attributes.push(Attribute::new("server.address", host.as_ref()));
        attributes.push(Attribute::new("server.port", i64::from(port)));
        if kind == SpanKind::Server {
            attributes.push(Attribute::new("client.address", peer_address.clone()));
        }
        attributes.push(Attribute::new("network.peer.address", peer_address));
        attributes.push(Attribute::new("network.peer.port", i64::from(peer.port())));
        attributes.push(Attribute::new(
            "network.protocol.version",
            AttributeValue::fixed(request.version.as_str()),
        ));
        if let Some(error_type) = &error_type {
            attributes.push(Attribute::new("error.type", error_type.as_ref()));
        }
        SpanParts {
            kind,
            name: full_name
                .clone()
                .unwrap_or_else(|| UNSPECIFIED_NAME.to_owned()),
            attributes,
            status: match message {
                Some(message) => SpanStatus::Error(message.into_owned()),
                None => SpanStatus::Unset,
            },
        }
    });
    let measurement = Measurement {
        kind,
        protocol: Protocol::Rpc {
            system: SYSTEM,
            method: full_name.map_or(Cow::Borrowed(UNKNOWN_METHOD), Cow::Owned),
            status_code: status_name,
        },
        error_type,
        // Metrics keep the server of client calls only (see
        // `Measurement::server`).
        server: (kind == SpanKind::Client).then_some(ServerAddress {
            address: host,
            port,
        }),
        duration: Duration::from_nanos(call.duration_ns()),
    };
    Description { span, measurement }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        call::{ConnInfo, Detail, HttpVersion, RpcMethod, Side},
        measure::{Instrument, LabelValue},
        span::AttributeValue,
    };

    fn call(side: Side, status_code: Option<u32>, outcome: Outcome) -> Call {
        Call {
            conn: ConnInfo {
                pid: 10,
                socket_cookie: 1,
                local: "127.0.0.1:50051".parse().unwrap(),
                remote: "127.0.0.1:40000".parse().unwrap(),
                side,
                tls: false,
            },
            detail: Detail::Grpc {
                request: RequestInfo {
                    method: "POST".into(),
                    target: "/sonde.test.Echo/Unary".into(),
                    version: HttpVersion::Http2,
                    host: Some("echo.local:50051".into()),
                    user_agent: Some("grpc-python/1.85".into()),
                    traceparent: Some(
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                    ),
                    tracestate: None,
                },
                rpc: RpcInfo {
                    method: Some(RpcMethod {
                        service: "sonde.test.Echo".into(),
                        method: "Unary".into(),
                    }),
                    status_code,
                },
            },
            outcome,
            start_ns: 0,
            end_ns: 0,
            request_tid: 1,
            response_tid: Some(1),
            trace: None,
        }
    }

    fn describe_call(call: &Call, conventions: RpcConventions) -> Description<'_> {
        let Detail::Grpc { request, rpc } = &call.detail else {
            panic!("a gRPC call: {call:?}");
        };
        describe(call, request, rpc, conventions, true)
    }

    fn span(call: &Call, conventions: RpcConventions) -> SpanParts {
        describe_call(call, conventions)
            .span
            .expect("asked for the span")
    }

    fn str_attr<'a>(span: &'a SpanParts, key: &str) -> Option<&'a str> {
        match span.attribute(key) {
            Some(AttributeValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    #[test]
    fn server_span_follows_conventions() {
        let ok = call(Side::Server, Some(0), Outcome::Response { status: 200 });
        let span = span(&ok, RpcConventions::Current);
        assert_eq!(span.name, "sonde.test.Echo/Unary");
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(str_attr(&span, "rpc.system.name"), Some("grpc"));
        assert_eq!(str_attr(&span, "rpc.method"), Some("sonde.test.Echo/Unary"));
        assert_eq!(str_attr(&span, "rpc.response.status_code"), Some("OK"));
        assert_eq!(str_attr(&span, "server.address"), Some("echo.local"));
        assert_eq!(str_attr(&span, "client.address"), Some("127.0.0.1"));
        assert_eq!(str_attr(&span, "network.protocol.version"), Some("2"));
        assert_eq!(span.attribute("rpc.system"), None);
        assert_eq!(span.status, SpanStatus::Unset);
    }

    #[test]
    fn measurements_follow_the_current_conventions_whatever_the_span_carries() {
        let failed = call(Side::Server, Some(14), Outcome::Response { status: 200 });
        let expected = vec![
            ("rpc.system.name", LabelValue::from("grpc")),
            ("rpc.method", LabelValue::from("sonde.test.Echo/Unary")),
            ("rpc.response.status_code", LabelValue::from("UNAVAILABLE")),
            ("error.type", LabelValue::from("UNAVAILABLE")),
        ];
        for conventions in [
            RpcConventions::Current,
            RpcConventions::Legacy,
            RpcConventions::Both,
        ] {
            let measurement = describe_call(&failed, conventions).measurement;
            assert_eq!(measurement.instrument(), Instrument::RpcServer);
            assert_eq!(measurement.attributes(), expected, "{conventions:?}");
        }
        let client = call(Side::Client, Some(0), Outcome::Response { status: 200 });
        let measurement = describe_call(&client, RpcConventions::Current).measurement;
        assert_eq!(measurement.instrument(), Instrument::RpcClient);
        assert_eq!(
            measurement.attributes(),
            vec![
                ("rpc.system.name", LabelValue::from("grpc")),
                ("rpc.method", LabelValue::from("sonde.test.Echo/Unary")),
                ("rpc.response.status_code", LabelValue::from("OK")),
                ("server.address", LabelValue::from("echo.local")),
                ("server.port", LabelValue::Int(50051)),
            ]
        );
    }

    #[test]
    fn error_sets_differ_by_side() {
        // (side, code, error)
        let cases = [
            (Side::Server, 5, false),
            (Side::Client, 5, true),
            (Side::Server, 4, true),
            (Side::Server, 1, false),
            (Side::Client, 1, true),
            (Side::Server, 13, true),
            (Side::Client, 0, false),
        ];
        for (side, code, error) in cases {
            let span = span(
                &call(side, Some(code), Outcome::Response { status: 200 }),
                RpcConventions::Current,
            );
            assert_eq!(
                matches!(span.status, SpanStatus::Error(_)),
                error,
                "{side:?} {code}"
            );
            assert_eq!(
                str_attr(&span, "error.type").is_some(),
                error,
                "{side:?} {code}"
            );
        }
        let reset = span(
            &call(Side::Client, None, Outcome::Reset { code: Some(8) }),
            RpcConventions::Current,
        );
        assert_eq!(str_attr(&reset, "error.type"), Some("CANCEL"));
        assert_eq!(reset.attribute("rpc.response.status_code"), None);
        let undecoded = span(
            &call(Side::Server, None, Outcome::Response { status: 200 }),
            RpcConventions::Current,
        );
        assert_eq!(
            undecoded.status,
            SpanStatus::Unset,
            "unknown is not an error"
        );
    }

    #[test]
    fn legacy_and_both_conventions() {
        let failed = call(Side::Client, Some(14), Outcome::Response { status: 200 });
        let legacy = span(&failed, RpcConventions::Legacy);
        assert_eq!(str_attr(&legacy, "rpc.system"), Some("grpc"));
        assert_eq!(str_attr(&legacy, "rpc.service"), Some("sonde.test.Echo"));
        assert_eq!(str_attr(&legacy, "rpc.method"), Some("Unary"));
        assert_eq!(
            legacy.attribute("rpc.grpc.status_code"),
            Some(&AttributeValue::Int(14))
        );
        assert_eq!(legacy.attribute("rpc.system.name"), None);
        let both = span(&failed, RpcConventions::Both);
        assert_eq!(str_attr(&both, "rpc.method"), Some("sonde.test.Echo/Unary"));
        assert_eq!(str_attr(&both, "rpc.service"), Some("sonde.test.Echo"));
        assert_eq!(
            str_attr(&both, "rpc.response.status_code"),
            Some("UNAVAILABLE")
        );
        assert_eq!(
            both.attributes
                .iter()
                .filter(|a| a.key == "rpc.method")
                .count(),
            1
        );
    }

    #[test]
    fn conventions_are_configured_by_name() {
        for (yaml, expected) in [
            ("current", RpcConventions::Current),
            ("legacy", RpcConventions::Legacy),
            ("both", RpcConventions::Both),
        ] {
            assert_eq!(
                serde_yaml_ng::from_str::<RpcConventions>(yaml).ok(),
                Some(expected)
            );
        }
        assert!(serde_yaml_ng::from_str::<RpcConventions>("old").is_err());
    }

    #[test]
    fn unknown_method_is_other() {
        let mut unknown = call(Side::Server, Some(0), Outcome::Response { status: 200 });
        if let Detail::Grpc { rpc, .. } = &mut unknown.detail {
            rpc.method = None;
        }
        let span = span(&unknown, RpcConventions::Current);
        assert_eq!(span.name, "grpc");
        assert_eq!(str_attr(&span, "rpc.method"), Some("_OTHER"));
    }
}
