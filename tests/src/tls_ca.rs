//! A certificate authority of the test's own, made with the openssl CLI: a
//! CA, a server certificate for `localhost` and 127.0.0.1 and a client
//! certificate, both signed by it, and the rustls server configuration
//! the OTLP receiver serves TLS (or mTLS) with.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// The CA and its two certificates, in a directory of their own (removed
/// on drop).
pub struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    /// Generates a CA and its server and client certificates (P-256 keys:
    /// fast to make); `name` tells tests' directories apart.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sonde-ca-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("CA directory");
        let ca = Self { dir };
        // A name of its own: two test CAs must not look like one.
        let subject = format!("/CN=sonde-test-ca-{name}");
        ca.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &subject,
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        ca.issue(
            "server",
            "/CN=localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        );
        ca.issue(
            "client",
            "/CN=sonde-agent",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        );
        ca
    }

    /// `name.key` and `name.pem`, signed by the CA with `extensions`.
    fn issue(&self, name: &str, subject: &str, extensions: &str) {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(self.dir.join(&ext), extensions).expect("extensions file");
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            &key,
            "-out",
            &csr,
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &pem,
            "-extfile",
            &ext,
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running openssl");
        assert!(status.success(), "openssl {args:?} failed");
    }

    /// A file of the CA's directory, as a path string.
    pub fn path(&self, file: &str) -> String {
        path_str(&self.dir.join(file))
    }

    /// The CA certificate (PEM).
    pub fn ca_cert(&self) -> String {
        self.path("ca.pem")
    }

    /// The client certificate and its key (PEM).
    pub fn client(&self) -> (String, String) {
        (self.path("client.pem"), self.path("client.key"))
    }

    /// The receiver's TLS configuration: the server certificate, and, for
    /// mTLS, a client certificate signed by this CA required.
    pub fn server_config(&self, require_client_certificate: bool) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = if require_client_certificate {
            let mut roots = RootCertStore::empty();
            roots
                .add(certificates(&self.dir.join("ca.pem")).remove(0))
                .expect("CA certificate");
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::from_pem_file(self.dir.join("server.key")).expect("server key");
        let mut config = builder
            .with_single_cert(certificates(&self.dir.join("server.pem")), key)
            .expect("server certificate");
        // gRPC needs h2; OTLP/HTTP clients offer http/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn certificates(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}

fn path_str(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}
