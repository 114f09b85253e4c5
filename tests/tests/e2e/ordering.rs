//! seq is gapless and unique per conversation, and one session's messages
//! keep their sending order.

use chat_tests::{TestSystem, seqs};

/// The seqs of the next `n` acks, in arrival order (the other sender's
/// messages arriving in between are skipped).
async fn ack_seqs(client: &mut chat_tests::Client, n: usize) -> Vec<i64> {
    let mut seqs = Vec::new();
    while seqs.len() < n {
        let frame = client.next().await;
        match frame["type"].as_str() {
            Some("ack") => seqs.push(frame["message"]["seq"].as_i64().unwrap_or_default()),
            Some("message" | "conversation" | "presence") => {}
            _ => panic!("unexpected frame {frame}"),
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_back_to_back_sends_keep_their_order() {
    let system = TestSystem::start().await;
    let conversation = system.direct(1, 2).await;
    let mut an = system.connect(0, 1).await;
    let mut binh = system.connect(1, 2).await;

    for i in 0..200 {
        an.send_message(conversation, &format!("m-{i}"), &format!("message {i}"))
            .await;
    }
    let mut acks = Vec::new();
    for _ in 0..200 {
        acks.push(an.next_of("ack").await["message"].clone());
    }
    acks.sort_by_key(|m| m["seq"].as_i64());
    for (i, message) in acks.iter().enumerate() {
        assert_eq!(message["seq"], i as i64 + 1);
        assert_eq!(
            message["client_msg_id"],
            format!("m-{i}"),
            "seq follows sending order"
        );
    }
    let mut delivered = Vec::new();
    for _ in 0..200 {
        delivered.push(
            binh.next_of("message").await["message"]["seq"]
                .as_i64()
                .unwrap_or_default(),
        );
    }
    assert_eq!(
        delivered,
        (1..=200).collect::<Vec<_>>(),
        "delivered in seq order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_racing_with_two_persisters_get_gapless_unique_seq() {
    let system = TestSystem::start_with(2, 2, |_| {}).await;
    let group = system.group(1, &[2]).await;
    let mut one = system.connect(0, 1).await;
    let mut two = system.connect(1, 2).await;

    let per_sender = 100;
    let race = async {
        for i in 0..per_sender {
            one.send_message(group, &format!("one-{i}"), "x").await;
        }
    };
    let other = async {
        for i in 0..per_sender {
            two.send_message(group, &format!("two-{i}"), "y").await;
        }
    };
    tokio::join!(race, other);

    let mine = ack_seqs(&mut one, per_sender).await;
    let theirs = ack_seqs(&mut two, per_sender).await;
    let mut sorted_mine = mine.clone();
    sorted_mine.sort_unstable();
    assert_eq!(mine, sorted_mine, "one sender's messages keep their order");

    let history = system.history(0, 1, group, "?limit=200").await;
    assert_eq!(
        seqs(&history),
        (1..=2 * per_sender as i64).collect::<Vec<_>>(),
        "gapless, unique"
    );
    let mut all: Vec<i64> = mine.into_iter().chain(theirs).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=2 * per_sender as i64).collect::<Vec<_>>(),
        "every ack has its own seq"
    );
}
