//! The web client (gateway/web/) is served at `/` of every gateway, with a
//! Content-Security-Policy that allows only our own origin.

use chat_tests::TestSystem;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_client_is_served_at_the_root_with_a_strict_policy() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", system.gateways[0]);

    let page = http
        .get(format!("{base}/"))
        .send()
        .await
        .expect("GET / answers");
    assert_eq!(page.status(), 200);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/html"));
    let policy = header("content-security-policy");
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(header("x-content-type-options"), "nosniff");
    let html = page.text().await.expect("a page");

    // Every script and stylesheet the page names is ours, and served.
    let mut assets = 0;
    for attribute in ["src=\"", "href=\""] {
        for part in html.split(attribute).skip(1) {
            let path = part.split('"').next().unwrap_or_default();
            assert!(path.starts_with("/app/"), "{path}: only our own files");
            let asset = http
                .get(format!("{base}{path}"))
                .send()
                .await
                .expect("the asset answers");
            assert_eq!(asset.status(), 200, "{path}");
            assets += 1;
        }
    }
    assert!(
        assets >= 2,
        "the page loads its script and its style: {html}"
    );

    for missing in ["/app/nothing.js", "/app/..%2FCargo.toml", "/app/index"] {
        let response = http
            .get(format!("{base}{missing}"))
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), 404, "{missing}");
    }
}
