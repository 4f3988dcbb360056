//! TLS to the collector: the rustls client configuration of an `https://`
//! endpoint, from the standard variables (`OTEL_EXPORTER_OTLP_CERTIFICATE`,
//! `_CLIENT_CERTIFICATE`, `_CLIENT_KEY` and their `_TRACES_`/`_METRICS_`
//! forms). Built once, with the rest of the settings, so that a missing
//! file or a key that does not match its certificate stops the agent at
//! start with the variable's name, instead of failing every export.
//!
//! A configured CA certificate replaces the system roots (as the Go and
//! Java SDKs do): pointing the agent at a private CA should not also trust
//! every public one. Both transports share this configuration through
//! hyper-rustls, with ring as the crypto provider, like the Kubernetes
//! client.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::config::{ConfigError, Setting};

/// The files named by the TLS variables that are set.
pub(super) struct TlsFiles {
    pub(super) ca: Option<Setting>,
    pub(super) client_certificate: Option<Setting>,
    pub(super) client_key: Option<Setting>,
}

/// The client configuration for an `https://` endpoint.
pub(super) fn client_config(files: TlsFiles) -> Result<Arc<ClientConfig>, ConfigError> {
    let roots = match &files.ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(ca)? {
                roots
                    .add(certificate)
                    .map_err(|error| invalid_pem(ca, error.to_string()))?;
            }
            roots
        }
        None => system_roots()?,
    };
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|error| ConfigError::Tls {
                reason: error.to_string(),
            })?
            .with_root_certificates(roots);
    let config = match (files.client_certificate, files.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(certificate), Some(key)) => {
            let chain = certificates(&certificate)?;
            let private_key = PrivateKeyDer::from_pem_slice(&read(&key)?)
                .map_err(|error| invalid_pem(&key, format!("no private key: {error}")))?;
            builder
                .with_client_auth_cert(chain, private_key)
                .map_err(|error| ConfigError::Tls {
                    reason: format!(
                        "{} and {} do not make a client identity: {error}",
                        certificate.name, key.name
                    ),
                })?
        }
        (Some(set), None) | (None, Some(set)) => {
            return Err(ConfigError::Tls {
                reason: format!(
                    "{} is set without its pair: a client certificate needs both \
                     _CLIENT_CERTIFICATE and _CLIENT_KEY",
                    set.name
                ),
            });
        }
    };
    Ok(Arc::new(config))
}

/// The operating system's trusted roots (the CA bundle of the container
/// image on Kubernetes).
fn system_roots() -> Result<RootCertStore, ConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(ConfigError::Tls {
            reason: format!(
                "no system root certificates found ({}); set OTEL_EXPORTER_OTLP_CERTIFICATE \
                 to the collector's CA",
                if errors.is_empty() {
                    "none installed".to_owned()
                } else {
                    errors.join("; ")
                }
            ),
        });
    }
    Ok(roots)
}

fn read(setting: &Setting) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(&setting.value).map_err(|source| ConfigError::TlsFile {
        setting: setting.name,
        path: PathBuf::from(&setting.value),
        source,
    })
}

fn certificates(setting: &Setting) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(setting)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid_pem(setting, error.to_string()))?;
    if certificates.is_empty() {
        return Err(invalid_pem(setting, "no PEM certificate in it".to_owned()));
    }
    Ok(certificates)
}

fn invalid_pem(setting: &Setting, reason: String) -> ConfigError {
    ConfigError::TlsPem {
        setting: setting.name,
        path: PathBuf::from(&setting.value),
        reason,
    }
}
