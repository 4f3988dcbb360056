//! The two OTLP transports behind one small trait, for any signal (traces,
//! metrics), and the sorting of their failures into retryable and
//! permanent, as the OTLP specification's "Failures" sections for gRPC and
//! HTTP define it.

use std::error::Error as _;
use std::io::Write as _;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flate2::write::GzEncoder;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{
    CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT,
};
use hyper::{Method, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use rustls::{ClientConfig, RootCertStore};
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};

use crate::telemetry::Counter;

use super::config::{Compression, OtlpConfig, Protocol};
use super::convert::EncodedTraces;
use crate::model::error::ErrorChain;

/// Why one export attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The gRPC call returned a non-OK status (connection failures included:
    /// tonic reports them as `UNAVAILABLE`).
    #[error("gRPC status {code:?}: {message}")]
    Grpc {
        /// Status code.
        code: tonic::Code,
        /// Status message and its causes.
        message: String,
    },
    /// The gRPC call failed in our client's transport before the server
    /// answered: connecting, the TLS handshake (a refused client
    /// certificate shows as `Unknown`), a reset connection. Retried like an
    /// HTTP request without a response, whatever the status code tonic
    /// gave it.
    #[error("gRPC status {code:?}: {message}")]
    GrpcTransport {
        /// Status code tonic chose.
        code: tonic::Code,
        /// Status message and its causes.
        message: String,
    },
    /// The HTTP endpoint answered with a non-2xx status.
    #[error("HTTP status {status}: {message}")]
    HttpStatus {
        /// Status.
        status: StatusCode,
        /// The server's explanation (`google.rpc.Status` message or text).
        message: String,
        /// The server's `Retry-After`, in seconds form.
        retry_after: Option<Duration>,
    },
    /// The HTTP request did not get a response (connect, reset, ...).
    #[error("HTTP request failed")]
    HttpRequest {
        /// Cause.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// gzip failed (memory only, so practically never).
    #[error("compressing the request body")]
    Compress {
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No answer within the configured timeout.
    #[error("no response within {timeout:?}")]
    Timeout {
        /// The limit.
        timeout: Duration,
    },
}

impl SendError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Grpc { code, .. } => matches!(
                code,
                tonic::Code::Cancelled
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Aborted
                    | tonic::Code::OutOfRange
                    | tonic::Code::Unavailable
                    | tonic::Code::DataLoss
            ),
            Self::HttpStatus { status, .. } => matches!(
                *status,
                StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ),
            // No response: the collector may be restarting or not up yet.
            Self::GrpcTransport { .. } | Self::HttpRequest { .. } | Self::Timeout { .. } => true,
            Self::Compress { .. } => false,
        }
    }

    /// The counter of this kind of failure, next to the total
    /// [`Counter::ExportRequestsFailed`].
    pub fn kind(&self) -> Counter {
        match self {
            Self::Timeout { .. } => Counter::ExportRequestsTimedOut,
            Self::HttpRequest { .. }
            | Self::GrpcTransport { .. }
            | Self::Grpc {
                code: tonic::Code::Unavailable,
                ..
            } => Counter::ExportRequestsUnreachable,
            _ if self.is_retryable() => Counter::ExportRequestsThrottled,
            _ => Counter::ExportRequestsRejected,
        }
    }

    /// The server's requested wait before retrying, if it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::HttpStatus { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn from_status(status: &tonic::Status) -> Self {
        // The cause of a transport failure ("connection refused") is in the
        // source chain, not in the message; a status with a source was made
        // by our own client, not sent by the server.
        match status.source() {
            Some(cause) => Self::GrpcTransport {
                code: status.code(),
                message: format!("{}: {}", status.message(), ErrorChain(cause)),
            },
            None => Self::Grpc {
                code: status.code(),
                message: status.message().to_owned(),
            },
        }
    }
}

/// One OTLP signal's export service: its messages and its gRPC method.
pub(crate) trait ExportService: Send + Sync + 'static {
    /// `Export*ServiceRequest`.
    type Request: prost::Message + Clone + Send + Sync + 'static;
    /// `Export*ServiceResponse`.
    type Response: prost::Message + Default + Send + 'static;

    /// The request as an OTLP/HTTP body.
    fn http_body(request: &Self::Request) -> Bytes {
        request.encode_to_vec().into()
    }

    /// The generated client's `export` call on `channel`.
    fn grpc_export(
        channel: Channel,
        compression: Compression,
        request: tonic::Request<Self::Request>,
    ) -> impl Future<Output = Result<tonic::Response<Self::Response>, tonic::Status>> + Send;
}

/// `opentelemetry.proto.collector.trace.v1.TraceService`.
pub(crate) struct TraceExport;

/// The method the generated `TraceServiceClient::export` calls.
const TRACE_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl ExportService for TraceExport {
    /// Encoded once per batch, so an attempt sends those bytes as they are.
    /// The generated client takes only the struct, hence the plain
    /// `tonic::client::Grpc` call it makes, with prost's codec on the bytes.
    type Request = EncodedTraces;
    type Response = ExportTraceServiceResponse;

    /// The bytes themselves: a batch is not copied again to be sent.
    fn http_body(request: &EncodedTraces) -> Bytes {
        request.bytes().clone()
    }

    async fn grpc_export(
        channel: Channel,
        compression: Compression,
        request: tonic::Request<Self::Request>,
    ) -> Result<tonic::Response<Self::Response>, tonic::Status> {
        let mut client = tonic::client::Grpc::new(channel);
        if compression == Compression::Gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        client
            .ready()
            .await
            .map_err(|error| tonic::Status::unknown(format!("service was not ready: {error}")))?;
        client
            .unary(
                request,
                tonic::codegen::http::uri::PathAndQuery::from_static(TRACE_EXPORT_PATH),
                tonic_prost::ProstCodec::default(),
            )
            .await
    }
}

/// `opentelemetry.proto.collector.metrics.v1.MetricsService`.
pub(crate) struct MetricsExport;

impl ExportService for MetricsExport {
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;

    async fn grpc_export(
        channel: Channel,
        compression: Compression,
        request: tonic::Request<Self::Request>,
    ) -> Result<tonic::Response<Self::Response>, tonic::Status> {
        let mut client = MetricsServiceClient::new(channel);
        if compression == Compression::Gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        client.export(request).await
    }
}

/// The transport the configuration asks for.
pub(crate) enum ProtocolTransport<S> {
    /// OTLP/gRPC.
    Grpc(GrpcTransport<S>),
    /// OTLP/HTTP (boxed: its client is several times larger).
    Http(Box<HttpTransport<S>>),
}

impl<S: ExportService> ProtocolTransport<S> {
    pub(crate) fn new(config: &OtlpConfig) -> Self {
        match config.protocol {
            Protocol::Grpc => Self::Grpc(GrpcTransport::new(config)),
            Protocol::HttpProtobuf => Self::Http(Box::new(HttpTransport::new(config))),
        }
    }
}

impl<S: ExportService> Transport<S> for ProtocolTransport<S> {
    async fn export(&self, request: &S::Request) -> Result<S::Response, SendError> {
        match self {
            Self::Grpc(transport) => transport.export(request).await,
            Self::Http(transport) => transport.export(request).await,
        }
    }
}

/// Sends one request; retries are the caller's business.
pub(crate) trait Transport<S: ExportService = TraceExport>: Sync {
    /// One attempt.
    fn export(
        &self,
        request: &S::Request,
    ) -> impl Future<Output = Result<S::Response, SendError>> + Send;
}

const USER_AGENT_VALUE: &str = concat!("sonde/", env!("CARGO_PKG_VERSION"));
const PROTOBUF: &str = "application/x-protobuf";
/// Error bodies are read for their message only.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const MAX_ERROR_MESSAGE_CHARS: usize = 256;

/// The configured headers plus our `User-Agent` (the specification asks
/// exporters to send one) unless the user set their own.
fn request_headers(config: &OtlpConfig) -> HeaderMap {
    let mut headers = config.headers.clone();
    headers
        .entry(USER_AGENT)
        .or_insert(HeaderValue::from_static(USER_AGENT_VALUE));
    headers
}

/// OTLP/gRPC over a lazily connected tonic channel: connection failures
/// surface as `UNAVAILABLE` on the call, and the next call reconnects.
pub(crate) struct GrpcTransport<S> {
    /// Clones share the connection.
    channel: Channel,
    compression: Compression,
    metadata: MetadataMap,
    timeout: Duration,
    service: PhantomData<fn() -> S>,
}

impl<S: ExportService> GrpcTransport<S> {
    pub(crate) fn new(config: &OtlpConfig) -> Self {
        let endpoint = Endpoint::from(config.endpoint.clone()).connect_timeout(config.timeout);
        // tonic's own TLS would be a second rustls setup; its custom
        // connector takes the one the HTTP transport uses.
        let channel = match &config.tls {
            Some(tls) => endpoint.connect_with_connector_lazy(
                HttpsConnectorBuilder::new()
                    .with_tls_config(ClientConfig::clone(tls))
                    .https_only()
                    .enable_http2()
                    .wrap_connector(http_connector(config)),
            ),
            None => endpoint.connect_lazy(),
        };
        Self {
            channel,
            compression: config.compression,
            metadata: MetadataMap::from_headers(request_headers(config)),
            timeout: config.timeout,
            service: PhantomData,
        }
    }
}

impl<S: ExportService> Transport<S> for GrpcTransport<S> {
    async fn export(&self, request: &S::Request) -> Result<S::Response, SendError> {
        let mut call = tonic::Request::new(request.clone());
        *call.metadata_mut() = self.metadata.clone();
        // Tells the collector our deadline (`grpc-timeout`).
        call.set_timeout(self.timeout);
        S::grpc_export(self.channel.clone(), self.compression, call)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| SendError::from_status(&status))
    }
}

/// TCP with the export timeout on connecting, `https://` URLs allowed
/// (the TLS layer above it handles them).
fn http_connector(config: &OtlpConfig) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.timeout));
    connector.enforce_http(false);
    connector
}

/// OTLP/HTTP with binary protobuf bodies, `POST`ed to the signal's URL.
pub(crate) struct HttpTransport<S> {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    endpoint: Uri,
    headers: HeaderMap,
    compression: Compression,
    service: PhantomData<fn() -> S>,
}

impl<S: ExportService> HttpTransport<S> {
    pub(crate) fn new(config: &OtlpConfig) -> Self {
        // http:// endpoints never touch the TLS settings, so they need no
        // trusted roots.
        let tls = config.tls.as_deref().cloned().unwrap_or_else(|| {
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map(|builder| {
                    builder
                        .with_root_certificates(RootCertStore::empty())
                        .with_no_client_auth()
                })
                .unwrap_or_else(|error| panic!("ring supports the default TLS versions: {error}"))
        });
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http_connector(config));
        let mut headers = request_headers(config);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
        if config.compression == Compression::Gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            endpoint: config.endpoint.clone(),
            headers,
            compression: config.compression,
            service: PhantomData,
        }
    }

    fn body(&self, request: &S::Request) -> Result<Bytes, SendError> {
        let encoded = S::http_body(request);
        match self.compression {
            Compression::None => Ok(encoded),
            Compression::Gzip => {
                let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder
                    .write_all(&encoded)
                    .and_then(|()| encoder.finish())
                    .map(Bytes::from)
                    .map_err(|source| SendError::Compress { source })
            }
        }
    }
}

impl<S: ExportService> Transport<S> for HttpTransport<S> {
    async fn export(&self, request: &S::Request) -> Result<S::Response, SendError> {
        let mut http_request = hyper::Request::new(Full::new(self.body(request)?));
        *http_request.method_mut() = Method::POST;
        *http_request.uri_mut() = self.endpoint.clone();
        *http_request.headers_mut() = self.headers.clone();
        let response = self
            .client
            .request(http_request)
            .await
            .map_err(|source| SendError::HttpRequest { source })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok()?.trim().parse().ok())
            .map(Duration::from_secs);
        let is_protobuf = response
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(PROTOBUF.as_bytes()));
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map(|collected| collected.to_bytes());
        if status.is_success() {
            // A 2xx means the data was accepted; the body only adds an
            // optional partial-success notice, so a body we cannot read
            // does not turn an accepted batch into a lost one.
            return Ok(body
                .ok()
                .and_then(|body| S::Response::decode(body).ok())
                .unwrap_or_default());
        }
        Err(SendError::HttpStatus {
            status,
            message: body
                .map(|body| error_message(&body, is_protobuf))
                .unwrap_or_default(),
            retry_after,
        })
    }
}

/// `google.rpc.Status`, the body OTLP/HTTP servers send with errors; only
/// the fields we show.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn error_message(body: &[u8], is_protobuf: bool) -> String {
    let message = if is_protobuf {
        RpcStatus::decode(body)
            .map(|status| status.message)
            .unwrap_or_default()
    } else {
        String::from_utf8_lossy(body).trim().to_owned()
    };
    message.chars().take(MAX_ERROR_MESSAGE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> SendError {
        SendError::HttpStatus {
            status: StatusCode::from_u16(status)
                .unwrap_or_else(|error| panic!("{status}: {error}")),
            message: String::new(),
            retry_after: None,
        }
    }

    fn grpc(code: tonic::Code) -> SendError {
        SendError::Grpc {
            code,
            message: String::new(),
        }
    }

    #[test]
    fn retryable_failures_follow_the_specification() {
        let retryable = [
            grpc(tonic::Code::Unavailable),
            grpc(tonic::Code::ResourceExhausted),
            grpc(tonic::Code::DeadlineExceeded),
            grpc(tonic::Code::Cancelled),
            grpc(tonic::Code::Aborted),
            grpc(tonic::Code::OutOfRange),
            grpc(tonic::Code::DataLoss),
            http(429),
            http(502),
            http(503),
            http(504),
            SendError::Timeout {
                timeout: Duration::from_secs(1),
            },
            // Our client failed (here a refused client certificate), not
            // the server: retried whatever code tonic chose.
            SendError::GrpcTransport {
                code: tonic::Code::Unknown,
                message: "received fatal alert: CertificateRequired".into(),
            },
        ];
        let permanent = [
            grpc(tonic::Code::InvalidArgument),
            grpc(tonic::Code::Unauthenticated),
            grpc(tonic::Code::PermissionDenied),
            grpc(tonic::Code::Unimplemented),
            grpc(tonic::Code::Internal),
            grpc(tonic::Code::Unknown),
            http(400),
            http(401),
            http(404),
            http(413),
            http(500),
            SendError::Compress {
                source: std::io::Error::other("test"),
            },
        ];
        for error in &retryable {
            assert!(error.is_retryable(), "{error} should be retried");
        }
        for error in &permanent {
            assert!(!error.is_retryable(), "{error} should not be retried");
            assert_eq!(error.kind(), Counter::ExportRequestsRejected, "{error}");
        }
    }

    #[test]
    fn failures_are_counted_by_kind() {
        let timeout = SendError::Timeout {
            timeout: Duration::from_secs(1),
        };
        assert_eq!(timeout.kind(), Counter::ExportRequestsTimedOut);
        assert_eq!(
            grpc(tonic::Code::Unavailable).kind(),
            Counter::ExportRequestsUnreachable
        );
        let transport = SendError::GrpcTransport {
            code: tonic::Code::Unknown,
            message: String::new(),
        };
        assert_eq!(transport.kind(), Counter::ExportRequestsUnreachable);
        for throttled in [grpc(tonic::Code::ResourceExhausted), http(429), http(503)] {
            assert_eq!(
                throttled.kind(),
                Counter::ExportRequestsThrottled,
                "{throttled}"
            );
        }
    }

    #[test]
    fn error_bodies_give_their_message() {
        let status = RpcStatus {
            code: 3,
            message: "bad span".into(),
        };
        assert_eq!(error_message(&status.encode_to_vec(), true), "bad span");
        assert_eq!(error_message(b" quota exceeded\n", false), "quota exceeded");
        let long = "x".repeat(1000);
        assert_eq!(
            error_message(long.as_bytes(), false).len(),
            MAX_ERROR_MESSAGE_CHARS
        );
    }

    #[test]
    fn user_agent_is_added_unless_configured() {
        let mut config = OtlpConfig::from_lookup(&Default::default(), |_| None)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(request_headers(&config)[USER_AGENT], USER_AGENT_VALUE);
        config
            .headers
            .insert(USER_AGENT, HeaderValue::from_static("custom"));
        assert_eq!(request_headers(&config)[USER_AGENT], "custom");
    }
}
