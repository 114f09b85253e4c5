"""The web client (gateway/web/) in a real browser, against the real system
through nginx: two users, two browser contexts, sockets on different
gateways (conftest.py). Waits are Playwright's auto-waiting expect() with
deadlines, never fixed sleeps."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from types import SimpleNamespace

from playwright.sync_api import expect

from conftest import VIEWPORT, _user_ids, no_sessions
from system import ROOT, wait_until

# The picture in README.md is docs/images/web-client.png: a run writes its
# screenshot under .data/ unless BROWSER_SCREENSHOT names another file
# (BROWSER_SCREENSHOT=docs/images/web-client.png tests/browser/run.sh -k screenshot).
SCREENSHOT = ROOT / os.environ.get("BROWSER_SCREENSHOT", ".data/test/browser/web-client.png")


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
    expect(typing).to_contain_text(b.name)
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
        # A page more comes. A wheel that lands while the last page is still
        # being laid out may leave the list away from the top (seen once in
        # a full run on a loaded machine): then the next turn wheels again.
        try:
            expect(a.messages()).not_to_have_count(shown, timeout=3_000)
        except AssertionError:
            pass
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


def test_two_tabs_of_one_browser_chat_as_two_users(system, browser):
    """What README promises: open the page, log in, open a second tab, log in
    as someone else, chat (the login is kept per tab, in sessionStorage)."""
    no_sessions(system)
    context = browser.new_context(viewport=VIEWPORT)
    try:
        first, second = context.new_page(), context.new_page()
        ids = [next(_user_ids), next(_user_ids)]
        for page, user_id in zip((first, second), ids):
            page.goto(f"{system.public}/")
            page.get_by_test_id("user-id").fill(str(user_id))
            page.get_by_test_id("login").click()
            expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "open")
        first.get_by_test_id("peer-id").fill(str(ids[1]))
        first.get_by_test_id("start-direct").click()
        first.get_by_test_id("composer").fill("chào tab bên cạnh")
        first.get_by_test_id("send").click()
        second.get_by_test_id("conversation").first.click()
        expect(second.get_by_test_id("message")).to_have_attribute("data-seq", "1")
        expect(second.get_by_test_id("message")).to_contain_text("chào tab bên cạnh")
        expect(second.locator("#me")).to_contain_text(str(ids[1]))
        first.reload()  # a reload keeps the tab's login
        expect(first.get_by_test_id("connection")).to_have_attribute("data-state", "open")
        expect(first.locator("#me")).to_contain_text(str(ids[0]))
    finally:
        context.close()


def test_a_group_made_in_the_page_reaches_its_members(system, pair):
    a, b = pair
    a.page.get_by_text("New group").click()
    a.page.get_by_label("Title").fill("Nhóm đi phượt")
    a.page.get_by_label("Member ids (comma-separated)").fill(f"{b.id}, {b.id + 700}")
    a.page.get_by_role("button", name="Create group").click()
    group = a.page.get_by_test_id("conversation").filter(has_text="Nhóm đi phượt")
    expect(group).to_have_attribute("aria-current", "true")
    expect(a.page.get_by_test_id("presence")).to_have_count(0)  # no presence for a group
    a.send("Cuối tuần đi Đà Lạt nhé")
    b.page.get_by_test_id("conversation").filter(has_text="Nhóm đi phượt").click()
    expect(b.message("Cuối tuần đi Đà Lạt nhé")).to_have_attribute("data-seq", "1")
    expect(b.page.locator("#conversation-title")).to_have_text("Nhóm đi phượt")


def test_screenshot_of_two_users_chatting(system, pair):
    a, b = pair
    conversation = a.start_direct(b)
    b.open_conversation(conversation)
    lines = [
        (a, "Chào Bình, tối nay đi ăn phở không?"),
        (b, "Được đó! Quán Phở Thìn ở Lò Đúc nhé."),
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


def test_on_a_phone_the_list_and_the_conversation_take_turns(system, new_user):
    a, b = new_user("An"), new_user("Bình")
    a.page.set_viewport_size({"width": 390, "height": 780})
    a.login()
    b.login()
    a.start_direct(b)
    expect(a.page.get_by_test_id("composer")).to_be_visible()
    expect(a.page.get_by_test_id("peer-id")).to_be_hidden()
    a.send("từ điện thoại")
    expect(a.messages().first).to_have_attribute("data-state", "stored")
    assert a.page.evaluate("document.documentElement.scrollWidth") <= 390

    a.page.get_by_role("button", name="Back to the conversation list").click()
    expect(a.page.get_by_test_id("peer-id")).to_be_visible()
    expect(a.page.get_by_test_id("composer")).to_be_hidden()
    expect(a.conversation_item_for(b)).to_contain_text("từ điện thoại")


def test_repeated_frames_are_dropped_and_a_missed_one_is_fetched(system, new_user):
    """B's socket, through Playwright's WebSocket routing, gets every
    `message` frame twice and loses one: B shows each message once, in seq
    order, the lost one fetched with after_seq when the next one shows the gap."""
    a, b = new_user("An"), new_user("Bình")
    lost = "hai (mất trên đường)"

    def route(page_side):
        server = page_side.connect_to_server()

        def from_server(message):
            frame = json.loads(message)
            if frame.get("type") != "message":
                return page_side.send(message)
            if frame["message"]["body"] == lost:
                return None
            page_side.send(message)
            page_side.send(message)  # a repeat, as after a crash and redelivery

        server.on_message(from_server)

    b.page.route_web_socket("**/ws", route)
    a.login()
    b.login()
    conversation = a.start_direct(b)
    b.open_conversation(conversation)
    for text in ["một", lost, "ba"]:
        a.send(text)
        expect(a.message(text)).to_have_attribute("data-state", "stored")
    expect(b.message("ba")).to_have_attribute("data-seq", "3")
    expect(b.messages()).to_have_count(3)
    assert seqs(b) == [1, 2, 3]
    assert b.page.locator('[data-testid="message"] .body').all_inner_texts() == ["một", lost, "ba"]


def test_a_failed_send_is_retried_with_the_same_client_msg_id(system, new_user):
    """A's first send is refused (an `internal` error, injected): it shows
    failed with a retry button, and the retry sends the same client_msg_id."""
    a, b = new_user("An"), new_user("Bình")
    sent = []

    def route(page_side):
        server = page_side.connect_to_server()

        def from_page(message):
            frame = json.loads(message)
            if frame.get("type") == "send":
                sent.append(frame["client_msg_id"])
                if len(sent) == 1:
                    refusal = {"type": "error", "code": "internal", "message": "try again",
                               "client_msg_id": frame["client_msg_id"]}
                    return page_side.send(json.dumps(refusal))
            server.send(message)

        page_side.on_message(from_page)

    a.page.route_web_socket("**/ws", route)
    a.login()
    b.login()
    conversation = a.start_direct(b)
    b.open_conversation(conversation)
    a.send("gửi lại lần nữa")
    mine = a.message("gửi lại lần nữa")
    expect(mine).to_have_attribute("data-state", "failed")
    expect(b.messages()).to_have_count(0)
    mine.get_by_test_id("retry").click()
    expect(mine).to_have_attribute("data-state", "stored")
    expect(mine).to_have_attribute("data-seq", "1")
    client_msg_id = mine.get_attribute("data-client-msg-id")
    assert sent == [client_msg_id, client_msg_id]
    assert states(a.page, client_msg_id) == ["pending", "failed", "pending", "stored"]
    expect(b.message("gửi lại lần nữa")).to_have_attribute("data-seq", "1")


def test_after_a_gateway_freezes_and_dies_a_resends_and_catches_up(system, pair):
    """A's gateway stops reading (SIGSTOP), then dies (SIGKILL). A's send
    to C never reached the broker, so only A's resend can store it; B's
    messages of that time reach A only by catching up (after_seq) once A
    is back, with nothing else arriving in that conversation to hint at it."""
    a, b = pair
    with_b = a.start_direct(b)
    b.open_conversation(with_b)
    c = SimpleNamespace(id=a.id + 500, name=f"User {a.id + 500}")  # never logs in, never named
    with_c = a.start_direct(c)
    system.gateways[a.gateway].signal(signal.SIGSTOP)
    try:
        a.send("gửi cho C khi mạng chập chờn")
        mine = a.message("gửi cho C khi mạng chập chờn")
        expect(mine).to_have_attribute("data-state", "pending")
        b.send("B: một")
        b.send("B: hai")
        expect(b.message("B: hai")).to_have_attribute("data-seq", "2")
        expect(a.item(with_b).get_by_test_id("unread")).to_have_count(0)  # nothing reached A
    finally:
        system.kill_gateway(a.gateway)  # SIGKILL works on a stopped process
    try:
        expect(a.page.get_by_test_id("connection")).to_have_attribute("data-state", "open")
        wait_until("A and B on the surviving gateway", lambda: system.sessions()[b.gateway] == 2, 10)
        expect(mine).to_have_attribute("data-seq", "1")
        expect(a.messages()).to_have_count(1)
        assert states(a.page, mine.get_attribute("data-client-msg-id")) == ["pending", "stored"]
        assert [m["body"] for m in history(system, a, with_c)] == ["gửi cho C khi mạng chập chờn"]

        expect(a.item(with_b).get_by_test_id("unread")).to_have_text("2")
        a.open_conversation(with_b)
        expect(a.messages()).to_have_count(2)
        shown = a.messages().evaluate_all(
            "els => els.map(e => [Number(e.dataset.seq), e.querySelector('.body').textContent])"
        )
        assert [tuple(m) for m in shown] == [(1, "B: một"), (2, "B: hai")]
        expect(a.item(with_b).get_by_test_id("unread")).to_have_count(0)
    finally:
        system.start_gateway(a.gateway)


def test_a_gateway_restarting_answers_the_send_in_flight_then_a_reconnects_at_once(system, pair):
    """A's gateway gets SIGTERM (a deploy's restart) while A's send waits
    for the persister (paused): the gateway answers it on A's old socket,
    then closes that socket with 1012 and exits 0. A reconnects at once,
    with no back-off, through nginx to the other gateway; the message is
    stored once, in both views, and the conversation goes on."""
    a, b = pair
    conversation = a.start_direct(b)
    b.open_conversation(conversation)
    # The reconnect's jitter at its largest: after 1012 the client waits
    # 249 ms; a back-off (any other close) would wait 499 ms.
    a.page.evaluate("() => { Math.random = () => 0.999; }")
    old = len(a.page.evaluate("window.__sockets")) - 1  # A's socket now
    connection_before = len(a.page.evaluate("window.__connection"))
    log = system.gateways[a.gateway].log
    log_before = log.stat().st_size
    sends_before = system.metric(a.gateway, "gateway_sends_received")
    text = "gửi ngay trước khi gateway khởi động lại"
    mine = a.message(text)
    system.pause_persister()
    try:
        try:
            a.send(text)
            expect(mine).to_have_attribute("data-state", "pending")
            wait_until(
                "A's gateway to receive the send",
                lambda: system.metric(a.gateway, "gateway_sends_received") > sends_before,
                5,
            )
            system.terminate_gateway(a.gateway)
            wait_until(
                "A's gateway to start shutting down",
                lambda: b"shutdown requested" in log.read_bytes()[log_before:],
                5,
            )
            # Shutting down, but A's session stays open for the send in flight.
            assert a.page.evaluate("window.__sockets")[old]["close"] is None
        finally:
            system.resume_persister()
        client_msg_id = mine.get_attribute("data-client-msg-id")
        wait_until(
            "A's old socket to close",
            lambda: a.page.evaluate("window.__sockets")[old]["close"],
            5,
        )
        expect(a.page.get_by_test_id("connection")).to_have_attribute("data-state", "open", timeout=3_000)
        assert system.gateway_exit(a.gateway) == 0
        sockets = a.page.evaluate("window.__sockets")
        closed, new = sockets[old], sockets[old + 1]
        # The ack came on the old socket, before its 1012.
        assert closed["close"]["code"] == 1012, closed["close"]
        assert ["ack", client_msg_id] in closed["received"], closed["received"]
        # At once: the next socket 249 ms after the close (the jitter
        # pinned above), not a back-off's 499 ms.
        waited = new["created"] - closed["close"]["at"]
        back = (new["hello"] or float("inf")) - closed["close"]["at"]
        print(f"1012, then the next socket after {waited:.0f} ms, its hello after {back:.0f} ms")
        assert waited < 400, f"A reconnected {waited:.0f} ms after 1012"
        assert back < 2_000, f"A's new session said hello {back:.0f} ms after 1012"
        assert len(sockets) == old + 2, "A needed more than one attempt"
        assert a.page.evaluate("window.__connection")[connection_before:] == ["closed", "connecting", "open"]
        wait_until("A and B on the surviving gateway", lambda: system.sessions()[b.gateway] == 2, 10)

        # Stored once, seq 1, in both views and in history; no resend needed.
        assert states(a.page, client_msg_id) == ["pending", "stored"]
        assert ["ack", client_msg_id] not in new["received"]
        for user in (a, b):
            expect(user.message(text)).to_have_attribute("data-seq", "1")
            expect(user.messages()).to_have_count(1)
        # And A goes on, on the other gateway.
        a.send("đã kết nối lại")
        expect(a.message("đã kết nối lại")).to_have_attribute("data-state", "stored")
        for user in (a, b):
            expect(user.message("đã kết nối lại")).to_have_attribute("data-seq", "2")
            expect(user.messages()).to_have_count(2)
            assert seqs(user) == [1, 2]
        stored = history(system, b, conversation)
        assert [(m["seq"], m["body"]) for m in stored] == [(1, text), (2, "đã kết nối lại")]
        assert stored[0]["client_msg_id"] == client_msg_id
    finally:
        system.gateways[a.gateway].stop()  # (gone already, unless the test failed early)
        system.start_gateway(a.gateway)


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
        # (page.wait_for_function would eval a string, which the page's CSP forbids.)
        wait_until("A to see its socket close", lambda: "closed" in a.page.evaluate("window.__connection"), 10)
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


def test_two_people_see_each_others_names_not_their_ids(system, pair):
    a, b = pair
    conversation = a.start_direct(b)
    b.open_conversation(conversation)
    # The list and the header name the peer, with their initials beside.
    expect(a.item(conversation).get_by_test_id("display-name")).to_have_text(b.name)
    expect(b.item(conversation).get_by_test_id("display-name")).to_have_text(a.name)
    expect(a.item(conversation).get_by_test_id("avatar")).to_have_text("B")
    expect(b.page.locator("#conversation-title").get_by_test_id("display-name")).to_have_text(a.name)
    expect(b.page.locator("#conversation-avatar").get_by_test_id("avatar")).to_have_text("A")
    a.send("chào Bình")
    theirs = b.messages().last
    expect(theirs.get_by_test_id("display-name")).to_have_text(a.name)
    # Times in the viewer's locale (a 24-hour clock in Vietnamese), under a
    # heading for their day.
    expect(theirs.locator("time")).to_have_text(re.compile(r"^\d{2}:\d{2}$"))
    expect(b.page.get_by_test_id("day")).to_have_count(1)
    expect(b.page.get_by_test_id("day")).to_have_text("Hôm nay")
    for user in (a, b):
        shown = user.page.get_by_test_id("display-name").all_inner_texts()
        assert not any(text.startswith("User ") for text in shown), shown


def test_seen_appears_when_the_peer_reads_and_again_after_a_reload(system, pair):
    a, b = pair
    conversation = a.start_direct(b)
    a.send("Bình ơi, xem chưa?")
    expect(a.message("Bình ơi, xem chưa?")).to_have_attribute("data-state", "stored")
    seen = a.page.get_by_test_id("seen")
    expect(seen).to_have_count(0)
    # B opens the conversation, which reads it: A's page says so (in
    # Vietnamese: the browsers here speak vi-VN).
    b.open_conversation(conversation)
    expect(seen).to_have_text("Đã xem")
    expect(a.message("Bình ơi, xem chưa?").get_by_test_id("seen")).to_have_count(1)
    # After a reload the page asks the server how far B read.
    a.page.reload()
    expect(a.page.get_by_test_id("connection")).to_have_attribute("data-state", "open")
    a.open_conversation(conversation)
    expect(a.page.get_by_test_id("seen")).to_have_text("Đã xem")


def test_people_are_added_to_a_group_and_one_who_leaves_loses_it(system, pair):
    a, b = pair
    a.page.get_by_text("New group").click()
    a.page.get_by_label("Title").fill("Nhóm nhỏ")
    a.page.get_by_label("Member ids (comma-separated)").fill(f"{a.id + 900}")
    a.page.get_by_role("button", name="Create group").click()
    group = a.page.get_by_test_id("conversation").filter(has_text="Nhóm nhỏ")
    expect(group).to_have_attribute("aria-current", "true")
    # A adds B from the group's header: B's list shows the group at once.
    a.page.get_by_test_id("add-members-ids").fill(str(b.id))
    a.page.get_by_test_id("add-members").click()
    theirs = b.page.get_by_test_id("conversation").filter(has_text="Nhóm nhỏ")
    expect(theirs).to_have_count(1)
    # B leaves: the group leaves B's list, and A's messages no longer reach B.
    theirs.click()
    b.page.get_by_test_id("leave").click()
    expect(theirs).to_have_count(0)
    a.send("Bình đã rời nhóm")
    expect(a.message("Bình đã rời nhóm")).to_have_attribute("data-state", "stored")
    expect(b.page.get_by_test_id("conversation").filter(has_text="Nhóm nhỏ")).to_have_count(0)


def test_privacy_settings_hide_presence_at_once_and_stay_after_a_reload(system, pair):
    a, b = pair
    conversation = a.start_direct(b)
    b.open_conversation(conversation)
    theirs = b.page.get_by_test_id("presence")
    expect(theirs).to_have_attribute("data-status", "online")
    # A hides their presence from everyone: B's page shows A offline, with
    # no "last seen", while A is still here.
    a.page.get_by_test_id("privacy").locator("summary").click()
    a.page.get_by_test_id("privacy-presence").select_option("nobody")
    expect(theirs).to_have_attribute("data-status", "offline")
    expect(theirs).to_have_text("offline")
    expect(b.conversation_item_for(a).locator(".dot.online")).to_have_count(0)
    expect(b.conversation_item_for(a).locator(".dot.offline")).to_have_count(1)
    a.page.get_by_test_id("privacy-read-receipts").uncheck()
    wait_until(
        "read receipts off on the server",
        lambda: system.api(a.id, "GET", "/api/me/privacy")["read_receipts"] is False,
        timeout=5,
    )
    a.page.reload()
    expect(a.page.get_by_test_id("connection")).to_have_attribute("data-state", "open")
    expect(a.page.get_by_test_id("privacy-presence")).to_have_value("nobody")
    expect(a.page.get_by_test_id("privacy-read-receipts")).not_to_be_checked()
    # Back to everyone: B sees A online again.
    a.page.get_by_test_id("privacy").locator("summary").click()
    a.page.get_by_test_id("privacy-presence").select_option("everyone")
    expect(theirs).to_have_attribute("data-status", "online")


def test_a_blocked_person_cannot_write_until_unblocked(system, pair):
    a, b = pair
    conversation = a.start_direct(b)
    b.open_conversation(conversation)
    expect(b.page.get_by_test_id("presence")).to_have_attribute("data-status", "online")
    a.page.get_by_test_id("block").click()
    expect(a.page.get_by_test_id("unblock")).to_be_visible()
    expect(a.page.get_by_test_id("block")).to_be_hidden()
    expect(a.page.get_by_test_id("blocked-list")).to_have_text(b.name)
    # B sees A go offline, and B's message is refused: nothing is stored.
    expect(b.page.get_by_test_id("presence")).to_have_attribute("data-status", "offline")
    b.send("alo, An ơi")
    refused = b.message("alo, An ơi")
    expect(refused).to_have_attribute("data-state", "failed")
    assert history(system, a, conversation) == []
    # Unblocked: B's retry goes through (the same client_msg_id).
    a.page.get_by_test_id("unblock").click()
    expect(a.page.get_by_test_id("block")).to_be_visible()
    expect(a.page.get_by_test_id("blocked-list")).to_have_text("nobody")

    def stored():
        if refused.get_attribute("data-state") == "failed":
            refused.get_by_test_id("retry").click()
        return refused.get_attribute("data-state") == "stored"

    wait_until("B's retried message stored", stored, timeout=5, every=0.3)
    expect(a.message("alo, An ơi")).to_have_attribute("data-state", "stored")
    assert [m["body"] for m in history(system, a, conversation)] == ["alo, An ơi"]


def test_a_card_and_a_notice_posted_by_the_site_show_in_both_pages(system, pair):
    a, b = pair
    conversation = a.start_direct(b)
    b.open_conversation(conversation)
    card = {"title": "Căn hộ 2PN, Quận 7", "subtitle": "3,2 tỷ · 70 m²", "url": "https://mapmo.vn/l/42"}
    system.server_api(
        "POST",
        f"/api/server/conversations/{conversation}/messages",
        {"client_msg_id": "interest-42", "sender_id": b.id, "body": f"{b.name} quan tâm tin này", "card": card},
    )
    system.server_api(
        "POST",
        f"/api/server/conversations/{conversation}/messages",
        {"client_msg_id": "notice-42", "body": "Tin đăng đã được duyệt"},
    )
    for user in (a, b):
        shown = user.message("quan tâm tin này")
        expect(shown.get_by_test_id("card-title")).to_have_text(card["title"])
        expect(shown.get_by_test_id("card")).to_have_attribute("href", card["url"])
        expect(shown.get_by_test_id("card")).to_contain_text(card["subtitle"])
        notice = user.message("Tin đăng đã được duyệt")
        expect(notice).to_have_attribute("data-kind", "system")
        expect(notice.get_by_test_id("system-message")).to_have_count(1)
        expect(notice.locator(".sender")).to_have_text("Thông báo")
    # B's page shows the card as B's own message, sent from elsewhere.
    expect(b.message("quan tâm tin này")).to_have_class(re.compile(r"\bmine\b"))
