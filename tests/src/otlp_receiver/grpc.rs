//! The OTLP/gRPC side: tonic's generated `TraceService` server, accepting
//! gzip-compressed messages as a collector does.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
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
        match self.0.receive(Protocol::Grpc, headers, request.get_ref()) {
            Ok(()) => Ok(Response::new(ExportTraceServiceResponse::default())),
            Err(Failure::Retryable) => Err(Status::unavailable("injected test failure")),
            Err(Failure::Permanent) => Err(Status::invalid_argument("injected test failure")),
        }
    }
}

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let service =
        TraceServiceServer::new(Receiver(shared)).accept_compressed(CompressionEncoding::Gzip);
    // One service, so no router: the server hands it every request.
    let served = Server::builder()
        .serve_with_incoming(service, TcpIncoming::from(listener))
        .await;
    if let Err(error) = served {
        panic!("OTLP/gRPC test receiver failed: {error}");
    }
}
