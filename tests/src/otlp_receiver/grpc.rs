//! The OTLP/gRPC side: tonic's generated `TraceService` and
//! `MetricsService` servers, accepting gzip-compressed messages as a
//! collector does.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::http;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::SERVICE_NAME as METRICS_SERVICE;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::codec::CompressionEncoding;
use tonic::codegen::{BoxFuture, Service};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::{Failure, Protocol, Shared, text_headers};

struct Receiver(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let headers = text_headers(&request.metadata().clone().into_headers());
        match self
            .0
            .receive(Protocol::Grpc, headers, request.get_ref())
            .await
        {
            Ok(()) => Ok(Response::new(ExportTraceServiceResponse::default())),
            Err(Failure::Retryable) => Err(Status::unavailable("injected test failure")),
            Err(Failure::Permanent) => Err(Status::invalid_argument("injected test failure")),
        }
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.0.receive_metrics(request.get_ref());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

pub(super) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let service = Signals {
        traces: TraceServiceServer::new(Receiver(Arc::clone(&shared)))
            .accept_compressed(CompressionEncoding::Gzip),
        metrics: MetricsServiceServer::new(Receiver(shared))
            .accept_compressed(CompressionEncoding::Gzip),
    };
    let served = match tls {
        None => {
            Server::builder()
                .serve_with_incoming(service, TcpIncoming::from(listener))
                .await
        }
        Some(config) => {
            Server::builder()
                .serve_with_incoming(service, super::tls::incoming(listener, config))
                .await
        }
    };
    if let Err(error) = served {
        panic!("OTLP/gRPC test receiver failed: {error}");
    }
}

/// Both services on one port, as a collector serves them, dispatched on
/// the gRPC path (tonic's router would need its `router` feature).
#[derive(Clone)]
struct Signals {
    traces: TraceServiceServer<Receiver>,
    metrics: MetricsServiceServer<Receiver>,
}

impl Service<http::Request<Body>> for Signals {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both generated servers are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let metrics_path = format!("/{METRICS_SERVICE}/");
        if request.uri().path().starts_with(&metrics_path) {
            self.metrics.call(request)
        } else {
            self.traces.call(request)
        }
    }
}
