"""The web client (gateway/web/) in a real browser, against the real system
through nginx: two users, two browser contexts, sockets on different
gateways (conftest.py). Waits are Playwright's auto-waiting expect() with
deadlines, never fixed sleeps."""

from __future__ import annotations

import time
from pathlib import Path

from playwright.sync_api import expect

from conftest import no_sessions
from system import ROOT, wait_until

SCREENSHOT = ROOT / "docs" / "images" / "web-client.png"


def states(page, client_msg_id: str) -> list[str]:
    return page.evaluate("(id) => window.__states[id] || []", client_msg_id)


def seqs(user) -> list[int]:
    return [int(s) for s in user.messages().evaluate_all("els => els.map(e => e.dataset.seq)")]


def history(system, user, conversation_id: int) -> list[dict]:
    """Every message of a conversation, from the HTTP API, oldest first."""
    messages, after = [], 0
    while True:
        page = system.api(
            user.id, "GET", f"/api/conversations/{conversation_id}/messages?limit=200&after_seq={after}"
        )["messages"]
        messages += page
        if len(page) < 200:
            return messages
        after = page[-1]["seq"]


def test_a_message_goes_pending_then_stored_with_its_seq_and_b_sees_it(system, pair):
    a, b = pair
    conversation = a.start_direct(b)
    b.open_conversation(conversation)

    a.send("Xin chào Bình! Hôm nay thế nào?")

    mine = a.message("Xin chào Bình!")
    expect(mine).to_have_attribute("data-state", "stored")
    expect(mine).to_have_attribute("data-seq", "1")
    client_msg_id = mine.get_attribute("data-client-msg-id")
    assert states(a.page, client_msg_id) == ["pending", "stored"]
    theirs = b.message("Xin chào Bình!")
    expect(theirs).to_have_attribute("data-seq", "1")
    expect(theirs).to_have_attribute("data-client-msg-id", client_msg_id)
    expect(theirs.locator(".body")).to_have_text("Xin chào Bình! Hôm nay thế nào?")

    b.send("Khỏe, cảm ơn An. Còn bạn?")
    for user in (a, b):
        expect(user.messages()).to_have_count(2)
        expect(user.message("Khỏe, cảm ơn An.")).to_have_attribute("data-seq", "2")
        assert seqs(user) == [1, 2]
    stored = history(system, a, conversation)
    assert [m["seq"] for m in stored] == [1, 2]
    assert stored[0]["client_msg_id"] == client_msg_id


def test_shift_enter_is_a_new_line_and_enter_sends(system, pair):
    a, b = pair
    a.start_direct(b)
    composer = a.page.get_by_test_id("composer")
    composer.click()
    composer.type("dòng một")
    composer.press("Shift+Enter")
    composer.type("dòng hai")
    expect(a.messages()).to_have_count(0)
    composer.press("Enter")
    expect(a.messages()).to_have_count(1)
    expect(a.messages().first.locator(".body")).to_have_text("dòng một\ndòng hai")
    expect(composer).to_have_value("")


def test_typing_is_shown_to_the_other_member_and_lapses(system, pair):
    a, b = pair
    conversation = a.start_direct(b)
    b.open_conversation(conversation)
    typing = a.page.get_by_test_id("typing")
    expect(typing).to_have_count(0)

    b.page.get_by_test_id("composer").press_sequentially("đang gõ", delay=30)

    expect(typing).to_be_visible()
    expect(typing).to_contain_text(f"User {b.id}")
    # B stops: the server's lapse (1 s in the test profile) or B's own stop
    # after a pause ends it.
    expect(typing).to_have_count(0, timeout=5_000)
    # B never sees their own typing.
    expect(b.page.get_by_test_id("typing")).to_have_count(0)


def test_presence_goes_offline_when_b_leaves_and_online_when_b_returns(system, pair):
    a, b = pair
    a.start_direct(b)
    presence = a.page.get_by_test_id("presence")
    expect(presence).to_have_attribute("data-status", "online")
    expect(a.conversation_item_for(b).locator(".dot.online")).to_have_count(1)

    left = time.monotonic()
    b.page.close()
    # Bound: presence.offline_grace_ms (600 ms in the test profile) plus a sweep.
    expect(presence).to_have_attribute("data-status", "offline", timeout=3_000)
    offline_after = time.monotonic() - left
    assert offline_after < 3.0, offline_after

    b.open_page()
    b.login()
    expect(presence).to_have_attribute("data-status", "online", timeout=3_000)


def test_unread_counts_rise_on_the_list_and_clear_when_opened(system, pair):
    a, b = pair
    conversation = b.start_direct(a)  # A does not open it
    item = a.item(conversation)
    expect(item).to_be_visible()  # the `conversation` frame brought it
    unread = item.get_by_test_id("unread")
    expect(unread).to_have_count(0)

    b.send("tin một")
    expect(unread).to_have_text("1")
    b.send("tin hai")
    b.send("tin ba")
    expect(unread).to_have_text("3")
    expect(item).to_contain_text("tin ba")  # the last message shows in the list

    a.open_conversation(conversation)
    expect(a.messages()).to_have_count(3)
    expect(unread).to_have_count(0)
    # The read marker reached the server: a fresh list says 0 too.
    wait_until(
        "the server's unread count to be 0",
        lambda: system.api(a.id, "GET", "/api/conversations")["conversations"][0]["unread_count"] == 0,
        5,
    )
    a.page.reload()
    expect(a.item(conversation)).to_be_visible()
    expect(a.item(conversation).get_by_test_id("unread")).to_have_count(0)


SEED_SCRIPT = """
async ([conversationId, count]) => {
  const { token } = JSON.parse(sessionStorage.getItem('mapmo-chat.session'));
  const ws = new WebSocket(`ws://${location.host}/ws`);
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  ws.send(JSON.stringify({ type: 'auth', token }));
  let acked = 0;
  const done = new Promise((resolve, reject) => {
    ws.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === 'error') reject(new Error(JSON.stringify(frame)));
      if (frame.type === 'ack' && ++acked === count) resolve();
    };
  });
  for (let i = 1; i <= count; i++) {
    const n = String(i).padStart(3, '0');
    ws.send(JSON.stringify({ type: 'send', conversation_id: conversationId,
                             client_msg_id: `seed-${n}`, body: `tin nhắn ${n}` }));
  }
  await done;
  ws.close();
  return acked;
}
"""


def test_scrolling_up_loads_older_pages_with_no_gap_and_no_duplicate(system, pair):
    a, b = pair
    total = 130  # the client asks pages of 50: three pages
    conversation = system.api(b.id, "POST", "/api/conversations", {"peer_id": a.id})["id"]
    assert b.page.evaluate(SEED_SCRIPT, [conversation, total]) == total

    a.open_conversation(conversation)
    expect(a.page.locator(f'[data-testid="message"][data-seq="{total}"]')).to_be_visible()
    first = a.page.locator('[data-testid="message"][data-seq="1"]')
    a.page.locator("#messages").hover()
    for _ in range(20):
        if first.count():
            break
        shown = a.messages().count()
        a.page.mouse.wheel(0, -20_000)
        expect(a.messages()).not_to_have_count(shown)  # a page more came
    expect(first).to_be_attached()

    assert seqs(a) == list(range(1, total + 1))
    bodies = a.page.locator('[data-testid="message"] .body').all_inner_texts()
    assert bodies == [f"tin nhắn {i:03}" for i in range(1, total + 1)]
    ids = a.messages().evaluate_all("els => els.map(e => e.dataset.messageId)")
    assert len(set(ids)) == total


def test_vietnamese_text_is_counted_in_characters_against_the_limit(system, pair):
    a, b = pair
    a.start_direct(b)
    composer = a.page.get_by_test_id("composer")
    # "ệ" typed as e + two combining marks: 3 code points, 1 character once
    # composed (NFC), which is how it is sent and counted.
    decomposed = "e\u0323\u0302"
    composer.fill(decomposed * 4001)
    expect(a.page.locator("#counter")).to_have_text("4001 / 4000")
    expect(a.page.get_by_test_id("send")).to_be_disabled()
    composer.fill(decomposed * 4000)
    expect(a.page.locator("#counter")).to_have_text("4000 / 4000")
    expect(a.page.get_by_test_id("send")).to_be_enabled()
    a.page.get_by_test_id("send").click()
    expect(a.messages().first).to_have_attribute("data-state", "stored")
    conversation = int(a.page.locator('[aria-current="true"]').get_attribute("data-conversation-id"))
    [stored] = history(system, a, conversation)
    assert stored["body"] == "\u1ec7" * 4000


def test_screenshot_of_two_users_chatting(system, pair):
    a, b = pair
    conversation = a.start_direct(b)
    b.open_conversation(conversation)
    lines = [
        (a, "Chào Bình, tối nay đi ăn phở không?"),
        (b, "Được đó! Quán Phở Thìn ở Lò Đúc nhé 🍜"),
        (a, "Ok, 7 giờ gặp nhau.\nMình đặt bàn trước."),
    ]
    for n, (user, text) in enumerate(lines, start=1):
        user.send(text)
        for other in (a, b):
            expect(other.messages()).to_have_count(n)
            expect(other.messages().nth(n - 1)).to_have_attribute("data-state", "stored")
    b.page.get_by_test_id("composer").press_sequentially("Tuyệt", delay=20)
    expect(a.page.get_by_test_id("typing")).to_be_visible()
    shots = [user.page.screenshot() for user in (a, b)]
    combine_side_by_side(a.context.browser, shots, SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 10_000


def combine_side_by_side(browser, shots: list[bytes], path: Path):
    """Two PNGs next to each other, drawn by the browser itself."""
    import base64

    context = browser.new_context(viewport={"width": 900 * len(shots) + 12 * (len(shots) + 1), "height": 664})
    page = context.new_page()
    images = "".join(
        f'<img src="data:image/png;base64,{base64.b64encode(s).decode()}">' for s in shots
    )
    page.set_content(
        "<body style='margin:0;background:#8c959f;display:flex;gap:12px;padding:12px'>"
        f"{images}</body>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    context.close()


def test_a_gateway_killed_with_a_message_pending_stores_it_exactly_once(system, pair):
    """Last: it kills a gateway (and starts it again for whatever follows)."""
    a, b = pair
    conversation = a.start_direct(b)
    b.open_conversation(conversation)
    # The persister paused: A's send reaches A's gateway and the broker, but
    # stays unanswered, so it is pending when the gateway dies.
    sends_before = system.metric(a.gateway, "gateway_sends_received")
    system.pause_persister()
    try:
        a.send("gửi trong lúc gateway chết")
        mine = a.message("gửi trong lúc gateway chết")
        expect(mine).to_have_attribute("data-state", "pending")
        wait_until(
            "A's gateway to receive the send",
            lambda: system.metric(a.gateway, "gateway_sends_received") > sends_before,
            5,
        )
        system.kill_gateway(a.gateway)
        # A notices, reconnects (to the other gateway, the only one left)
        # and sends it again with the same client_msg_id.
        a.page.wait_for_function("window.__connection.includes('closed')", timeout=10_000)
        expect(a.page.get_by_test_id("connection")).to_have_attribute("data-state", "open")
        wait_until("A and B on the surviving gateway", lambda: system.sessions()[b.gateway] == 2, 10)
        expect(mine).to_have_attribute("data-state", "pending")
    finally:
        system.resume_persister()
    try:
        for user in (a, b):
            expect(user.message("gửi trong lúc gateway chết")).to_have_count(1)
            expect(user.message("gửi trong lúc gateway chết")).to_have_attribute("data-seq", "1")
            expect(user.messages()).to_have_count(1)
        client_msg_id = mine.get_attribute("data-client-msg-id")
        assert states(a.page, client_msg_id) == ["pending", "stored"]
        stored = history(system, a, conversation)
        assert [(m["seq"], m["client_msg_id"]) for m in stored] == [(1, client_msg_id)]
        # And the conversation goes on.
        b.send("vẫn nhận được")
        expect(a.message("vẫn nhận được")).to_have_attribute("data-seq", "2")
    finally:
        system.start_gateway(a.gateway)
