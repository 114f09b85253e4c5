//! TLS to every backend. The test instance of deploy/services.sh serves
//! Postgres, RabbitMQ and Redis over TLS too, with certificates from a
//! throw-away CA made at start (deploy/services/tls.sh), and `env` names
//! them (`MAPMO_TLS_*`). The plain tests use the plain listeners.

use chat_gateway::Gateway;
use chat_persister::Persister;
use chat_presence::Presence;
use chat_shared::config::Settings;
use chat_tests::TestSystem;
use sea_orm::sqlx;
use std::path::PathBuf;

/// The TLS side of the test servers.
struct Tls {
    amqp_url: String,
    redis_url: String,
    ca: PathBuf,
    /// A CA that signed nothing the servers hold.
    other_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn tls() -> Tls {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run the tests through deploy/test.sh (deploy/services.sh env test)")
        })
    };
    Tls {
        amqp_url: var("MAPMO_TLS_AMQP_URL"),
        redis_url: var("MAPMO_TLS_REDIS_URL"),
        ca: var("MAPMO_TLS_CA_FILE").into(),
        other_ca: var("MAPMO_TLS_OTHER_CA_FILE").into(),
        client_cert: var("MAPMO_TLS_CLIENT_CERT_FILE").into(),
        client_key: var("MAPMO_TLS_CLIENT_KEY_FILE").into(),
    }
}

/// The test database's URL (plain, `sslmode=disable`) asking for TLS with
/// the certificate checked, host name included.
fn verify_full(url: &str) -> String {
    assert!(url.contains("sslmode=disable"), "the plain test URL: {url}");
    url.replace("sslmode=disable", "sslmode=verify-full")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_talk_with_every_backend_reached_over_tls() {
    let tls = tls();
    let system = TestSystem::start_with(2, 1, |s| {
        s.database.url = verify_full(&s.database.url);
        s.database.ca_file = Some(tls.ca.clone());
        s.amqp.url = tls.amqp_url.clone();
        s.amqp.ca_file = Some(tls.ca.clone());
        // the broker checks a client certificate when one is sent
        s.amqp.client_cert_file = Some(tls.client_cert.clone());
        s.amqp.client_key_file = Some(tls.client_key.clone());
        s.redis.url = tls.redis_url.clone();
        s.redis.ca_file = Some(tls.ca.clone());
    })
    .await;
    let conversation = system.direct(1, 2).await;
    let mut binh = system.connect(1, 2).await;
    let mut an = system.connect(0, 1).await;

    // Presence: the gateways announce over the broker, presence keeps it
    // in Redis; both are on their TLS-only ports.
    assert_eq!(binh.next_presence_of(1).await["status"], "online");
    let stored = an.send_and_ack(conversation, "tls-1", "qua TLS").await;
    assert_eq!(binh.next_of("message").await["message"], stored);

    let mut db = system.database_connection().await;
    let (kept,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages WHERE body = 'qua TLS'")
        .fetch_one(&mut db)
        .await
        .expect("counting the stored message");
    assert_eq!(kept, 1);
    // Postgres serves plain and TLS on one port: every connection of the
    // services to this test's database is encrypted (the test's own, above,
    // is plain and left out).
    let encrypted: Vec<(bool,)> = sqlx::query_as(
        "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
    )
    .fetch_all(&mut db)
    .await
    .expect("pg_stat_ssl");
    assert!(!encrypted.is_empty(), "the services hold connections");
    assert!(
        encrypted.iter().all(|(ssl,)| *ssl),
        "every service connection uses TLS: {encrypted:?}"
    );
}

/// The settings of `system` with `backend` alone reached over TLS, trusting
/// only a CA that did not sign its certificate.
fn trusting_another_ca(system: &TestSystem, tls: &Tls, backend: &str) -> Settings {
    let mut settings = system.settings.clone();
    let wrong = Some(tls.other_ca.clone());
    match backend {
        "Postgres" => {
            settings.database.url = verify_full(&settings.database.url);
            settings.database.ca_file = wrong;
        }
        "RabbitMQ" => {
            settings.amqp.url = tls.amqp_url.clone();
            settings.amqp.ca_file = wrong;
        }
        "Redis" => {
            settings.redis.url = tls.redis_url.clone();
            settings.redis.ca_file = wrong;
        }
        other => panic!("no backend {other}"),
    }
    settings
}

fn assert_refused(backend: &str, error: anyhow::Error) {
    let text = format!("{error:#}");
    assert!(
        text.contains(&format!("{backend} at 127.0.0.1:"))
            && text.contains("TLS certificate was refused")
            && text.contains("UnknownIssuer"),
        "{backend}: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_stops_each_service_naming_the_backend() {
    let tls = tls();
    // Only the test database: each service is built here, and must refuse.
    let system = TestSystem::start_services(0, 0, false, |_| {}).await;
    for backend in ["Postgres", "RabbitMQ", "Redis"] {
        let settings = trusting_another_ca(&system, &tls, backend);
        let Err(error) = Gateway::build(settings.clone()).await else {
            panic!("a gateway started trusting another CA for {backend}");
        };
        assert_refused(backend, error);
        // The persister has no use for Redis.
        if backend != "Redis" {
            let Err(error) = Persister::build(settings.clone()).await else {
                panic!("a persister started trusting another CA for {backend}");
            };
            assert_refused(backend, error);
        }
        let Err(error) = Presence::build(settings).await else {
            panic!("a presence service started trusting another CA for {backend}");
        };
        assert_refused(backend, error);
    }
}
