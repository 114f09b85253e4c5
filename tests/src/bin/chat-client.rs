//! A terminal client for trying mapmo-chat by hand (README, "Try it").
//!
//!   chat-client --url http://127.0.0.1:28080 --user 42
//!
//! Gets a dev token, connects, prints every frame. Type:
//!   /direct 7          open (or create) the direct conversation with user 7
//!   /group Team 7 9    create a group with users 7 and 9
//!   /to 12             talk in conversation 12
//!   /list              your conversations
//!   /history           the newest page of the current conversation
//!   anything else      is sent to the current conversation

use anyhow::{Context, bail};
use chat_tests::cli::Args;
use chat_tests::load::setup;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    let base = args
        .value("--url")
        .unwrap_or("http://127.0.0.1:28080")
        .to_owned();
    let user: i64 = args
        .value("--user")
        .context("--user <id> is required")?
        .parse()
        .context("--user must be a number")?;
    let http = reqwest::Client::new();

    let token = setup::tokens(&http, &base, &[user])
        .await
        .context("dev login (is auth.dev_login on?)")?
        .remove(0);
    let ws = setup::connect(&base, &token)
        .await
        .context("connecting to /ws")?;
    println!("<< connected as user {user}");
    let (mut write, mut read) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = read.next().await {
            if let Message::Text(text) = msg {
                println!("<< {text}");
            }
        }
        println!("connection closed");
        std::process::exit(0);
    });

    let mut current: Option<i64> = None;
    let mut counter = 0u64;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let auth = format!("Bearer {token}");
        let answer: Option<Value> = match words.as_slice() {
            ["/direct", peer] => {
                let body = json!({"peer_id": peer.parse::<i64>()?});
                let v = create(&http, &base, &auth, body).await?;
                current = v["id"].as_i64().or(current);
                Some(v)
            }
            ["/group", title, members @ ..] => {
                let ids: Vec<i64> = members.iter().filter_map(|m| m.parse().ok()).collect();
                let v = create(
                    &http,
                    &base,
                    &auth,
                    json!({"title": title, "member_ids": ids}),
                )
                .await?;
                current = v["id"].as_i64().or(current);
                Some(v)
            }
            ["/to", id] => {
                current = Some(id.parse()?);
                None
            }
            ["/list"] => Some(
                http.get(format!("{base}/api/conversations"))
                    .header("authorization", &auth)
                    .send()
                    .await?
                    .json()
                    .await?,
            ),
            ["/history"] => {
                let Some(id) = current else {
                    bail!("no current conversation: /direct, /group or /to first")
                };
                Some(
                    http.get(format!("{base}/api/conversations/{id}/messages"))
                        .header("authorization", &auth)
                        .send()
                        .await?
                        .json()
                        .await?,
                )
            }
            [] => None,
            _ => {
                let Some(id) = current else {
                    eprintln!("no current conversation: /direct, /group or /to first");
                    continue;
                };
                counter += 1;
                let frame = json!({"type": "send", "conversation_id": id, "client_msg_id": format!("cli-{user}-{}-{counter}", std::process::id()), "body": line});
                write.send(Message::Text(frame.to_string().into())).await?;
                None
            }
        };
        if let Some(answer) = answer {
            println!("{answer}");
        }
    }
    Ok(())
}

/// `POST /api/conversations`.
async fn create(
    http: &reqwest::Client,
    base: &str,
    auth: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let answer = http
        .post(format!("{base}/api/conversations"))
        .header("authorization", auth)
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    Ok(answer)
}
