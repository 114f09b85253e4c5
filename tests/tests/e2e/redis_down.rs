//! Chat goes on while Redis is down; presence degrades to what each gateway
//! knows, and recovers by itself when Redis is back. This test runs its own
//! redis-server (the test instance's is shared by every test).

use chat_tests::{DEADLINE, TestSystem, eventually, eventually_within, free_port};

struct RedisServer {
    child: tokio::process::Child,
}

impl RedisServer {
    async fn start(port: u16) -> Self {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server: {e}"));
        eventually("redis-server did not start", async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        Self { child }
    }

    async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_goes_on_with_redis_down_and_presence_recovers_when_it_is_back() {
    let port = free_port();
    let redis = RedisServer::start(port).await;
    let system =
        TestSystem::start_with(2, 1, |s| s.redis.url = format!("redis://127.0.0.1:{port}/")).await;
    let conversation = system.direct(1, 2).await;
    redis.kill().await;

    // Messages flow.
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;
    let stored = an
        .send_and_ack(conversation, "no-redis", "still works")
        .await;
    assert_eq!(binh.next_of("message").await["message"], stored);

    // Presence answers what the gateway knows; readiness says why.
    let token = system.token(2).await;
    let (status, body) = system
        .get(0, "/api/presence?user_ids=1", Some(&token))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["presence"][0]["status"], "online",
        "An is on gateway 0: {body}"
    );
    let (status, body) = system.get(0, "/ready", None).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (503, Some("cache unreachable"))
    );
    assert_eq!(
        system
            .get(0, "/ready?require=broker,database", None)
            .await
            .0,
        200
    );

    // Redis comes back (empty): heartbeats rebuild presence without anyone reconnecting.
    let _redis = RedisServer::start(port).await;
    eventually_within(DEADLINE, async || {
        // Gateway 1 does not host An: only Redis can say An is online.
        let (_, body) = system
            .get(1, "/api/presence?user_ids=1", Some(&token))
            .await;
        if body["presence"][0]["status"] == "online" && body["presence"][0]["last_seen"].is_string()
        {
            Ok(())
        } else {
            Err(format!("presence did not recover: {body}"))
        }
    })
    .await;
    assert_eq!(system.get(0, "/ready", None).await.0, 200);
}
