//! People (version 2): names come from the host site's tokens, are stored
//! NFC-normalised when a token is used, shown to whoever shares a
//! conversation (`GET /api/users`, a conversation's `members`), and a change
//! reaches them live as a `user` frame, on whichever gateway they are.

use chat_tests::{Client, TestSystem, eventually};
use serde_json::{Value, json};

/// The users `GET /api/users?ids=..` answers `caller` (a token without a
/// name, so asking changes nothing).
async fn users(system: &TestSystem, caller: i64, ids: &str) -> (u16, Value) {
    let token = system.token(caller).await;
    system
        .get(0, &format!("/api/users?ids={ids}"), Some(&token))
        .await
}

fn name_of(users: &Value, id: i64) -> Option<Value> {
    users["users"]
        .as_array()?
        .iter()
        .find(|u| u["id"] == id)
        .map(|u| u["name"].clone())
}

/// Waits until `caller` sees `user` named `name`.
async fn sees_name(system: &TestSystem, caller: i64, user: i64, name: Value) {
    eventually(
        &format!("user {caller} sees {user} named {name}"),
        async || {
            let (_, body) = users(system, caller, &user.to_string()).await;
            name_of(&body, user) == Some(name.clone())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_name_of_a_token_is_stored_nfc_normalised_when_the_token_is_used() {
    let system = TestSystem::start().await;
    system.direct(1, 2).await;
    // "Lan Nguyễn" typed with combining marks, used on a WebSocket.
    let token = system.token_named(1, "Lan Nguye\u{302}\u{303}n").await;
    let _lan = Client::connect(system.gateways[0], Some(&token), None)
        .await
        .unwrap()
        .authenticated()
        .await;
    sees_name(&system, 2, 1, json!("Lan Nguyễn")).await;
    // A later token wins, used on any API request.
    let renamed = system.token_named(1, "Lan N.").await;
    let (status, _) = system.get(1, "/api/conversations", Some(&renamed)).await;
    assert_eq!(status, 200);
    sees_name(&system, 2, 1, json!("Lan N.")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_breaks_the_rules_leaves_the_stored_name_and_the_token_works() {
    let system = TestSystem::start().await;
    system.direct(1, 2).await;
    let good = system.token_named(1, "Minh").await;
    system.get(0, "/api/conversations", Some(&good)).await;
    sees_name(&system, 2, 1, json!("Minh")).await;
    for bad in ["Minh\nTrần", "   ", &"ư".repeat(101)] {
        let token = system.token_named(1, bad).await;
        let (status, _) = system.get(0, "/api/conversations", Some(&token)).await;
        assert_eq!(status, 200, "the token itself stays valid");
    }
    // A good name after the bad ones is stored: the bad ones were seen.
    let after = system.token_named(1, "Minh Trần").await;
    system.get(0, "/api/conversations", Some(&after)).await;
    sees_name(&system, 2, 1, json!("Minh Trần")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_answers_for_the_caller_and_those_who_share_a_conversation_only() {
    let system = TestSystem::start().await;
    system.direct(1, 2).await;
    system.direct(3, 4).await;
    let named = system.token_named(3, "Stranger").await;
    system.get(0, "/api/conversations", Some(&named)).await;

    let (status, body) = users(&system, 1, "1,2,3,2").await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<i64> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2], "a stranger is left out, each id once: {body}");
    // A member nobody ever named is there, with name null.
    assert_eq!(name_of(&body, 2), Some(Value::Null));
    assert_eq!(body["users"][0]["avatar_url"], Value::Null);

    let too_many: Vec<String> = (1..=201).map(|n| n.to_string()).collect();
    for bad in ["", "x", "0", &too_many.join(",")] {
        let (status, body) = users(&system, 1, bad).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let (status, _) = system.get(0, "/api/users?ids=1", None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_name_reaches_co_members_on_the_other_gateway_as_a_user_frame() {
    let system = TestSystem::start_with(2, 1, |_| {}).await;
    system.direct(1, 2).await;
    let mut binh = system.connect(1, 2).await;
    let mut stranger = system.connect(1, 5).await;

    let token = system.token_named(1, "Lan").await;
    system.get(0, "/api/conversations", Some(&token)).await;
    let frame = binh.next_of("user").await;
    assert_eq!(
        frame,
        json!({"type": "user", "user": {"id": 1, "name": "Lan", "avatar_url": null}})
    );
    // The same name again is no change: nothing more is sent.
    system.get(0, "/api/conversations", Some(&token)).await;
    let renamed = system.token_named(1, "Lan Nguyễn").await;
    system.get(0, "/api/conversations", Some(&renamed)).await;
    assert_eq!(binh.next_of("user").await["user"]["name"], "Lan Nguyễn");
    assert!(
        binh.drain().await.is_empty(),
        "one frame a change, none for a name already stored"
    );
    assert!(
        stranger.drain().await.is_empty(),
        "a stranger hears nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_carry_their_members_with_names_up_to_fifty() {
    let system = TestSystem::start().await;
    let direct = system.direct(1, 2).await;
    let named = system.token_named(2, "Bình").await;
    system.get(0, "/api/conversations", Some(&named)).await;
    let small = system.group(1, &[2, 3]).await;
    let fifty: Vec<i64> = (2..=50).collect();
    let fits = system.group(1, &fifty).await;
    let fifty_one: Vec<i64> = (2..=51).collect();
    let large = system.group(1, &fifty_one).await;

    let token = system.token(1).await;
    eventually("Bình's name in the conversation list", async || {
        let (_, body) = system.get(0, "/api/conversations", Some(&token)).await;
        let list = body["conversations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let of = |id: i64| list.iter().find(|c| c["id"] == id).cloned();
        let Some(direct) = of(direct) else {
            return false;
        };
        let members = direct["members"].as_array().cloned().unwrap_or_default();
        let names: Vec<&Value> = members.iter().map(|m| &m["name"]).collect();
        if names != [&Value::Null, &json!("Bình")] {
            return false;
        }
        assert_eq!(of(small).unwrap()["members"].as_array().unwrap().len(), 3);
        assert_eq!(of(fits).unwrap()["members"].as_array().unwrap().len(), 50);
        let large = of(large).unwrap();
        assert!(large.get("members").is_none(), "{large}");
        assert_eq!(large["member_ids"].as_array().unwrap().len(), 51);
        true
    })
    .await;
}
