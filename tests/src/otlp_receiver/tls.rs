//! TLS for the receiver's two servers: rustls through tokio-rustls. A
//! connection whose handshake fails (no client certificate under mTLS, a
//! client that does not trust the CA) is dropped, as a collector would.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// A server-side TLS connection tonic can serve (it wants `Connected`,
/// which tonic implements for TLS streams only with its own TLS features).
pub(super) struct TlsIo(TlsStream<TcpStream>);

impl Connected for TlsIo {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The handshake on an accepted connection; `None` if it failed.
pub(super) async fn accept(acceptor: &TlsAcceptor, tcp: TcpStream) -> Option<TlsIo> {
    acceptor.accept(tcp).await.ok().map(TlsIo)
}

/// Accepted connections that completed their handshake, for tonic.
pub(super) fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> impl Stream<Item = io::Result<TlsIo>> {
    let acceptor = TlsAcceptor::from(config);
    futures_util::stream::unfold((listener, acceptor), |(listener, acceptor)| async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            if let Some(tls) = accept(&acceptor, tcp).await {
                return Some((Ok(tls), (listener, acceptor)));
            }
        }
    })
}
