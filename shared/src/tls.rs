//! TLS to the backends, with rustls and ring's crypto (no OpenSSL). Each
//! backend is configured by its URL and one CA file:
//!
//! - Postgres: `sslmode` in `database.url` (`verify-full` checks the
//!   certificate and that it names the URL's host, `verify-ca` only the
//!   certificate, `require` encrypts without checking, `disable` never) and
//!   `database.ca_file` (or `sslrootcert` in the URL);
//! - RabbitMQ: `amqps://` and `amqp.ca_file`, with `amqp.client_cert_file`
//!   and `amqp.client_key_file` when the broker asks for a client certificate;
//! - Redis: `rediss://` and `redis.ca_file`.
//!
//! Without a CA file a certificate must chain to a public root: Mozilla's,
//! built in (Postgres, RabbitMQ), or the system's store (Redis).
//!
//! A refused certificate is a setting to fix, not an outage to wait out:
//! [`check_certificates`], which every service runs first, stops it with a
//! sentence that names the backend. A backend that does not answer is only
//! logged there, and waited for as before.

use crate::config::{AmqpSettings, DatabaseSettings, RedisSettings, Settings};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The backends a service reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    RabbitMq,
    Redis,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Postgres => "Postgres",
            Backend::RabbitMq => "RabbitMQ",
            Backend::Redis => "Redis",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{key} ({}): {source}", path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{backend} at {address}: its TLS certificate was refused ({reason}); {hint}")]
    CertificateRefused {
        backend: Backend,
        address: String,
        reason: String,
        hint: &'static str,
    },
}

/// Whether `url` is of `scheme` (`amqps`, `rediss`).
pub fn scheme_is(url: &str, scheme: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(s, _)| s.eq_ignore_ascii_case(scheme))
}

/// The `sslmode` of a Postgres URL (`prefer`, libpq's default, when absent).
fn postgres_sslmode(url: &str) -> String {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("sslmode="))
        .unwrap_or("prefer")
        .to_ascii_lowercase()
}

/// Whether the URL asks for the server's certificate to be checked.
pub fn postgres_verifies(url: &str) -> bool {
    matches!(postgres_sslmode(url).as_str(), "verify-ca" | "verify-full")
}

/// `host:port` of a URL, without its credentials (for messages).
fn address(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, a)| a)
        .to_owned()
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::File {
        key,
        path: path.to_owned(),
        source,
    })
}

fn read_optional(key: &'static str, path: Option<&PathBuf>) -> Result<Option<Vec<u8>>, Error> {
    path.map(|p| read(key, p)).transpose()
}

/// The TLS settings lapin connects `amqps://` with (the CA, and the client
/// certificate when there is one); empty for `amqp://`.
pub fn amqp_config(settings: &AmqpSettings) -> Result<OwnedTLSConfig, Error> {
    let ca = read_optional("amqp.ca_file", settings.ca_file.as_ref())?;
    let cert = read_optional("amqp.client_cert_file", settings.client_cert_file.as_ref())?;
    let key = read_optional("amqp.client_key_file", settings.client_key_file.as_ref())?;
    Ok(OwnedTLSConfig {
        cert_chain: ca.map(|pem| String::from_utf8_lossy(&pem).into_owned()),
        identity: match (cert, key) {
            (Some(pem), Some(key)) => Some(OwnedIdentity::PKCS8 { pem, key }),
            _ => None,
        },
    })
}

/// The Redis client: with `redis.ca_file` as its only root when set.
pub fn redis_client(settings: &RedisSettings) -> Result<redis::Client, redis::RedisError> {
    match &settings.ca_file {
        None => redis::Client::open(settings.url.as_str()),
        Some(path) => {
            let root_cert = read("redis.ca_file", path).map_err(std::io::Error::other)?;
            redis::Client::build_with_tls(
                settings.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )
        }
    }
}

/// Why the TLS handshake refused the server's certificate, when that is
/// what `error` (or what caused it) says; `None` for any other failure.
/// The clients wrap rustls's error differently (sqlx keeps it as a source,
/// lapin and redis as the text of an I/O error), so the text is read too.
pub fn certificate_refusal(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(rustls::Error::InvalidCertificate(reason)) = e.downcast_ref::<rustls::Error>() {
            return Some(format!("invalid peer certificate: {reason:?}"));
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(reason) = certificate_refusal(inner)
        {
            return Some(reason);
        }
        let text = e.to_string();
        if let Some(at) = text.find("invalid peer certificate") {
            return Some(text[at..].to_owned());
        }
        next = e.source();
    }
    None
}

/// Connects once to each of `backends` (those the service uses) whose URL
/// asks for TLS, so that a refused certificate stops the service at start,
/// with the backend named; any other failure (not answering, a wrong
/// password) is logged and left to the service's own connecting and
/// retrying.
pub async fn check_certificates(settings: &Settings, backends: &[Backend]) -> Result<(), Error> {
    let uses = |backend| backends.contains(&backend);
    let (postgres, rabbitmq, redis) = tokio::join!(
        async {
            if uses(Backend::Postgres) {
                check_postgres(&settings.database).await
            } else {
                Ok(())
            }
        },
        async {
            if uses(Backend::RabbitMq) {
                check_amqp(&settings.amqp).await
            } else {
                Ok(())
            }
        },
        async {
            if uses(Backend::Redis) {
                check_redis(&settings.redis).await
            } else {
                Ok(())
            }
        },
    );
    postgres.and(rabbitmq).and(redis)
}

/// How long each check waits for an answer before leaving it to the service.
const CHECK_WAIT: Duration = Duration::from_secs(5);

/// Turns a failed check into the error that stops the service when the
/// certificate was refused, and into a warning otherwise.
fn judge<E: std::error::Error + 'static>(
    backend: Backend,
    url: &str,
    outcome: Result<Result<(), E>, tokio::time::error::Elapsed>,
    hint: &'static str,
) -> Result<(), Error> {
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => match certificate_refusal(&e) {
            Some(reason) => Err(Error::CertificateRefused {
                backend,
                address: address(url),
                reason,
                hint,
            }),
            None => {
                tracing::warn!(%backend, error = %e, "TLS check: not connected (retried later)");
                Ok(())
            }
        },
        Err(_) => {
            tracing::warn!(%backend, "TLS check: no answer in {CHECK_WAIT:?} (retried later)");
            Ok(())
        }
    }
}

async fn check_postgres(settings: &DatabaseSettings) -> Result<(), Error> {
    use sea_orm::sqlx::{Connection, postgres::PgConnectOptions};
    if matches!(
        postgres_sslmode(&settings.url).as_str(),
        "disable" | "allow" | "prefer"
    ) {
        return Ok(());
    }
    if let Some(path) = &settings.ca_file {
        read("database.ca_file", path)?;
    }
    let Ok(mut options) = crate::schema::postgres_scheme(&settings.url).parse::<PgConnectOptions>()
    else {
        return Ok(()); // a malformed URL: the pool says so, naming it
    };
    if let Some(path) = &settings.ca_file {
        options = options.ssl_root_cert(path);
    }
    let outcome = tokio::time::timeout(CHECK_WAIT, async {
        let conn = sea_orm::sqlx::PgConnection::connect_with(&options).await?;
        conn.close().await
    })
    .await;
    judge(
        Backend::Postgres,
        &settings.url,
        outcome,
        "database.ca_file (or sslrootcert in database.url) must name the CA that signed it, \
         and with sslmode=verify-full the URL's host must be one the certificate names",
    )
}

async fn check_amqp(settings: &AmqpSettings) -> Result<(), Error> {
    if !scheme_is(&settings.url, "amqps") {
        return Ok(());
    }
    let tls = amqp_config(settings)?;
    let outcome = tokio::time::timeout(CHECK_WAIT, async {
        let runtime = lapin::runtime::default_runtime()?;
        let props = lapin::ConnectionProperties::default().with_connection_name("tls check".into());
        let conn =
            lapin::Connection::connect_with_config(&settings.url, props, tls, runtime).await?;
        conn.close(200, "checked".into()).await
    })
    .await;
    judge(
        Backend::RabbitMq,
        &settings.url,
        outcome,
        "amqp.ca_file must name the CA that signed it, and the URL's host must be one the \
         certificate names",
    )
}

async fn check_redis(settings: &RedisSettings) -> Result<(), Error> {
    if !scheme_is(&settings.url, "rediss") {
        return Ok(());
    }
    if let Some(path) = &settings.ca_file {
        read("redis.ca_file", path)?;
    }
    let outcome = tokio::time::timeout(CHECK_WAIT, async {
        let client = redis_client(settings)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
    })
    .await;
    judge(
        Backend::Redis,
        &settings.url,
        outcome,
        "redis.ca_file must name the CA that signed it, and the URL's host must be one the \
         certificate names",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sslmode_decides_whether_postgres_checks_the_certificate() {
        assert!(postgres_verifies(
            "postgres://u:p@h:5432/db?sslmode=verify-full"
        ));
        assert!(postgres_verifies(
            "postgres://h/db?application_name=x&sslmode=verify-ca"
        ));
        assert!(!postgres_verifies("postgres://h/db?sslmode=require"));
        assert!(!postgres_verifies("postgres://h/db"));
        assert_eq!(postgres_sslmode("postgres://h/db"), "prefer");
    }

    #[test]
    fn messages_name_the_server_without_its_credentials() {
        assert_eq!(
            address("amqps://chat:secret@mq.example:5671/%2f"),
            "mq.example:5671"
        );
        assert_eq!(
            address("postgres://chat:pw@db:5432/chat?sslmode=verify-full"),
            "db:5432"
        );
        assert_eq!(address("rediss://cache:6380"), "cache:6380");
        assert!(scheme_is("AMQPS://h", "amqps"));
        assert!(!scheme_is("amqp://h", "amqps"));
    }

    #[test]
    fn a_refused_certificate_is_told_from_other_failures_through_wrapping() {
        let refused = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = std::io::Error::other(refused);
        assert_eq!(
            certificate_refusal(&wrapped).as_deref(),
            Some("invalid peer certificate: UnknownIssuer")
        );
        let as_text = std::io::Error::other("tls: invalid peer certificate: BadSignature");
        assert_eq!(
            certificate_refusal(&as_text).as_deref(),
            Some("invalid peer certificate: BadSignature")
        );
        let refused_connection = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(certificate_refusal(&refused_connection), None);
    }

    #[test]
    fn a_missing_file_names_its_setting() {
        let settings = AmqpSettings {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..crate::config::Settings::load_profile("test")
                .expect("test settings")
                .amqp
        };
        let error = amqp_config(&settings)
            .expect_err("no such file")
            .to_string();
        assert!(
            error.starts_with("amqp.ca_file (/nonexistent/ca.pem): "),
            "{error}"
        );
    }
}
