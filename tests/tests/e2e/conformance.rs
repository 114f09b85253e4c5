//! `/ws/echo`, the socket the Autobahn conformance suite drives
//! (deploy/autobahn.sh): off unless configured; when on, it echoes and
//! closes broken frames with the same codes as `/ws`.

use chat_tests::TestSystem;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_socket_does_not_exist_unless_configured() {
    let system = TestSystem::start_with(1, 0, |_| {}).await;
    let url = format!("ws://{}/ws/echo", system.gateways[0]);
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("expected a 404, got {:?}", other.map(|(_, r)| r.status())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_socket_returns_every_message_and_closes_broken_frames_like_the_chat_socket() {
    let system = TestSystem::start_with(1, 0, |s| s.gateway.conformance_echo = true).await;
    let url = format!("ws://{}/ws/echo", system.gateways[0]);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let sent = [
        Message::Text("xin chào, Mapmo".into()),
        Message::Binary(vec![0, 159, 146, 150].into()),
        Message::Ping(b"are you there".to_vec().into()),
    ];
    for message in &sent {
        ws.send(message.clone()).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        got.push(ws.next().await.expect("a message").unwrap());
    }
    assert_eq!(got[0], sent[0]);
    assert_eq!(got[1], sent[1]);
    assert_eq!(got[2], Message::Pong(b"are you there".to_vec().into()));

    let broken = Frame::message(vec![0xff, 0xfe], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(broken)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1007));

    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let big = "x".repeat(system.settings.gateway.max_frame_bytes + 1);
    ws.send(Message::Text(big.into())).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1009));
}

async fn close_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(message) = ws.next().await {
        match message {
            Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}
