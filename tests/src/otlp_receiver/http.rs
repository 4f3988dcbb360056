//! The OTLP/HTTP side: `POST /v1/traces` and `/v1/metrics` with a binary
//! protobuf body, optionally gzip-compressed, answered like a collector
//! would.

use std::convert::Infallible;
use std::io::Read as _;
use std::sync::Arc;

use bytes::Bytes;
use flate2::read::GzDecoder;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{Failure, Protocol, Shared, text_headers};

const PROTOBUF: &str = "application/x-protobuf";

/// Serves until dropped. Connections are tasks of a `JoinSet` owned here,
/// so dropping the receiver closes them too, as a killed collector would:
/// a client's keep-alive connection must not outlive it.
pub(super) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => panic!("OTLP/HTTP test receiver: accept failed: {error}"),
            },
            // Reaps finished connections so the set does not grow.
            Some(_) = connections.join_next() => continue,
        };
        let shared = Arc::clone(&shared);
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            match acceptor {
                None => serve_connection(TokioIo::new(stream), shared).await,
                Some(acceptor) => {
                    if let Some(tls) = super::tls::accept(&acceptor, stream).await {
                        serve_connection(TokioIo::new(tls), shared).await;
                    }
                }
            }
        });
    }
}

async fn serve_connection<IO>(io: IO, shared: Arc<Shared>)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
    // A client that hangs up mid-request is the client's problem.
    let _ = http1::Builder::new().serve_connection(io, service).await;
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match receive(&shared, request).await {
        Ok(()) => {
            let mut response = Response::new(Full::from(
                ExportTraceServiceResponse::default().encode_to_vec(),
            ));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
            response
        }
        Err((status, message)) => {
            let mut response = Response::new(Full::from(message));
            *response.status_mut() = status;
            response
        }
    })
}

async fn receive(shared: &Shared, request: Request<Incoming>) -> Result<(), (StatusCode, String)> {
    let is_metrics = match request.uri().path() {
        "/v1/traces" => false,
        "/v1/metrics" => true,
        _ => return Err((StatusCode::NOT_FOUND, format!("no route {}", request.uri()))),
    };
    if request.method() != Method::POST {
        return Err((StatusCode::METHOD_NOT_ALLOWED, request.method().to_string()));
    }
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|value: &HeaderValue| value.to_str().ok())
    };
    if header(CONTENT_TYPE) != Some(PROTOBUF) {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-type {:?}", header(CONTENT_TYPE)),
        ));
    }
    let gzip = match header(CONTENT_ENCODING) {
        None | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content-encoding {other}"),
            ));
        }
    };
    let headers = text_headers(request.headers());
    let bad_request = |what: &str, error: &dyn std::error::Error| {
        (StatusCode::BAD_REQUEST, format!("{what}: {error}"))
    };
    let body = request
        .into_body()
        .collect()
        .await
        .map_err(|error| bad_request("reading the body", &error))?
        .to_bytes();
    let body = if gzip {
        let mut decoded = Vec::new();
        GzDecoder::new(&body[..])
            .read_to_end(&mut decoded)
            .map_err(|error| bad_request("gunzip", &error))?;
        Bytes::from(decoded)
    } else {
        body
    };
    if is_metrics {
        let export = ExportMetricsServiceRequest::decode(body)
            .map_err(|error| bad_request("decoding ExportMetricsServiceRequest", &error))?;
        shared.receive_metrics(&export);
        return Ok(());
    }
    let export = ExportTraceServiceRequest::decode(body)
        .map_err(|error| bad_request("decoding ExportTraceServiceRequest", &error))?;
    shared
        .receive(Protocol::Http, headers, &export)
        .await
        .map_err(|failure| match failure {
            Failure::Retryable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "injected test failure".into(),
            ),
            Failure::Permanent => (StatusCode::BAD_REQUEST, "injected test failure".into()),
        })
}
