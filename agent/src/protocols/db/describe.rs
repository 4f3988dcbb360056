//! The span and measurement of a database or cache call, per the
//! OpenTelemetry database conventions: `db.*` attributes, the span named
//! by `db.query.summary`, else `{db.operation.name} {target}`, else
//! `db.system.name`; errors carry `db.response.status_code` and
//! `error.type`.

use std::{borrow::Cow, time::Duration};

use crate::{
    model::{
        call::{Call, Outcome},
        db::DbCall,
        measure::{Measurement, Protocol, ServerAddress},
        span::{Attribute, AttributeValue, SpanKind, SpanStatus},
    },
    protocols::{DescribeOptions, Description, SpanParts, http::unanswered},
};

/// Describes a database call (always a client span); the span part only
/// when `with_span`.
pub fn describe<'a>(
    call: &'a Call,
    db: &'a DbCall,
    options: &DescribeOptions,
    with_span: bool,
) -> Description<'a> {
    let request = &db.request;
    let system = db.system.as_str();
    let (code, error_type, message): (Option<&str>, Option<Cow<'a, str>>, Option<String>) =
        match &call.outcome {
            Outcome::Failed { code } => {
                let shown = code.as_deref().unwrap_or("_OTHER");
                (
                    code.as_deref(),
                    Some(Cow::Borrowed(shown)),
                    Some(format!("{system} error {shown}")),
                )
            }
            Outcome::Succeeded | Outcome::Response { .. } => (None, None, None),
            other => {
                let (error_type, message) = unanswered(other);
                (None, Some(Cow::Borrowed(error_type)), Some(message.into()))
            }
        };
    let server = call.conn.remote;
    let server_address = server.ip().to_string();
    let span = with_span.then(|| {
        let mut attributes = vec![Attribute::new(
            "db.system.name",
            AttributeValue::fixed(system),
        )];
        let mut push = |key: &'static str, value: &Option<String>| {
            if let Some(value) = value {
                attributes.push(Attribute::new(key, value.as_str()));
            }
        };
        push("db.namespace", &request.namespace);
        push("db.operation.name", &request.operation);
        push("db.collection.name", &request.collection);
        push("db.query.summary", &request.summary);
        if options.db_query_text {
            push("db.query.text", &request.query_text);
        }
        if let Some(code) = code {
            attributes.push(Attribute::new("db.response.status_code", code));
        }
        if let Some(error_type) = &error_type {
            attributes.push(Attribute::new("error.type", error_type.as_ref()));
        }
        attributes.push(Attribute::new("server.address", server_address.as_str()));
        attributes.push(Attribute::new("server.port", i64::from(server.port())));
        attributes.push(Attribute::new(
            "network.peer.address",
            server_address.as_str(),
        ));
        attributes.push(Attribute::new(
            "network.peer.port",
            i64::from(server.port()),
        ));
        let name = match (&request.summary, &request.operation) {
            (Some(summary), _) => summary.clone(),
            (None, Some(operation)) => {
                match request.collection.as_ref().or(request.namespace.as_ref()) {
                    Some(target) => format!("{operation} {target}"),
                    None => operation.clone(),
                }
            }
            (None, None) => system.to_owned(),
        };
        SpanParts {
            kind: SpanKind::Client,
            name,
            attributes,
            status: message.map_or(SpanStatus::Unset, SpanStatus::Error),
        }
    });
    Description {
        span,
        measurement: Measurement {
            kind: SpanKind::Client,
            protocol: Protocol::Db {
                system,
                operation: request.operation.as_deref(),
                collection: request.collection.as_deref(),
                namespace: request.namespace.as_deref(),
                status_code: code,
            },
            error_type,
            server: Some(ServerAddress {
                address: Cow::Owned(server_address),
                port: server.port(),
            }),
            duration: Duration::from_nanos(call.duration_ns()),
        },
    }
}
