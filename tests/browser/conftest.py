"""Fixtures: the real system (system.py), Debian's Chromium driven by
Playwright, and pairs of users whose sockets are on different gateways."""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from system import System, SystemError_, wait_until

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Wide enough for both panes (the list and the conversation).
VIEWPORT = {"width": 900, "height": 640}
expect.set_options(timeout=10_000)

_user_ids = itertools.count(1001)


@pytest.fixture(scope="session")
def system():
    # SIGTERM (a CI timeout, a Ctrl-C'd wrapper) ends the run through the
    # finally below, so no process outlives it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    system = None
    try:
        system = System()
        system.start()
    except SystemError_ as error:
        if system:
            system.stop()
        pytest.exit(f"cannot start the system: {error}", returncode=3)
    try:
        yield system
    finally:
        system.stop()


@pytest.fixture(scope="session")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (tests/browser/run.sh does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@dataclass
class User:
    """One person: their own browser context (cookies, storage), one page."""

    id: int
    name: str
    context: object
    page: Page
    base: str
    errors: list = field(default_factory=list)

    def open_page(self) -> Page:
        self.page = self.context.new_page()
        record_states(self.page)
        # Any uncaught exception in the client, or a resource the page's
        # Content-Security-Policy refused, fails the test (new_user checks).
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        self.page.on(
            "console",
            lambda m: m.type == "error" and "Content Security Policy" in m.text
            and self.errors.append(f"CSP: {m.text}"),
        )
        return self.page

    def login(self):
        page = self.page
        page.goto(f"{self.base}/")
        page.get_by_test_id("user-id").fill(str(self.id))
        page.get_by_test_id("display-name").fill(self.name)
        page.get_by_test_id("login").click()
        expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "open")

    def start_direct(self, peer: "User") -> int:
        """Opens the direct conversation with `peer` from the UI; its id."""
        self.page.get_by_test_id("peer-id").fill(str(peer.id))
        self.page.get_by_test_id("start-direct").click()
        item = self.conversation_item_for(peer)
        expect(item).to_have_attribute("aria-current", "true")
        return int(item.get_attribute("data-conversation-id"))

    def open_conversation(self, conversation_id: int):
        self.item(conversation_id).click()
        expect(self.item(conversation_id)).to_have_attribute("aria-current", "true")

    def item(self, conversation_id: int):
        return self.page.locator(
            f'[data-testid="conversation"][data-conversation-id="{conversation_id}"]'
        )

    def conversation_item_for(self, peer: "User"):
        # A direct conversation is shown under the peer's name (their id
        # when they gave none).
        return self.page.get_by_test_id("conversation").filter(has_text=peer.name)

    def send(self, text: str):
        composer = self.page.get_by_test_id("composer")
        composer.fill(text)
        composer.press("Enter")

    def messages(self):
        return self.page.get_by_test_id("message")

    def message(self, text: str):
        return self.messages().filter(has_text=text)


def record_states(page: Page):
    """Every data-state each message and the connection goes through, in
    window.__states[client_msg_id] and window.__connection: a pending
    message is stored within milliseconds, too fast to catch by polling.

    And every WebSocket the page makes, in window.__sockets: when it was
    made, the frames it received (type and client_msg_id; not pongs), when
    `hello` came, and its close event's code and time (performance.now()
    ms). Playwright's own WebSocket events do not carry the close code. The
    page's WebSocket is a subclass of the browser's that only listens."""
    page.add_init_script(
        """
        window.__sockets = [];
        const NativeWebSocket = window.WebSocket;
        window.WebSocket = class extends NativeWebSocket {
          constructor(...args) {
            super(...args);
            const record = {created: performance.now(), received: [], hello: null, close: null};
            window.__sockets.push(record);
            this.addEventListener('message', (event) => {
              let frame;
              try { frame = JSON.parse(event.data); } catch { return; }
              if (frame.type === 'pong') return;
              if (frame.type === 'hello') record.hello = performance.now();
              record.received.push([frame.type, frame.client_msg_id || null]);
            });
            this.addEventListener('close', (event) => {
              record.close = {code: event.code, at: performance.now()};
            });
          }
        };
        window.__states = {};
        window.__connection = [];
        const note = (el) => {
          if (el.nodeType !== 1) return;
          const id = el.dataset.testid, state = el.dataset.state;
          if (id === 'message') {
            const states = (window.__states[el.dataset.clientMsgId] ||= []);
            if (states.at(-1) !== state) states.push(state);
          } else if (id === 'connection' && window.__connection.at(-1) !== state) {
            window.__connection.push(state);
          }
          if (el.querySelectorAll) el.querySelectorAll('[data-testid]').forEach(note);
        };
        new MutationObserver((records) => {
          for (const r of records) {
            if (r.type === 'attributes') note(r.target);
            else r.addedNodes.forEach(note);
          }
        }).observe(document, {subtree: true, childList: true, attributes: true,
                              attributeFilter: ['data-state']});
        """
    )


def gateway_of(system: System, before: list[int], timeout: float = 10) -> int:
    """The gateway whose session count rose by one since `before`."""

    def moved():
        now = system.sessions()
        grown = [i for i, (b, n) in enumerate(zip(before, now)) if n == b + 1]
        return grown if sum(now) == sum(before) + 1 else None

    return wait_until("a new session on a gateway", moved, timeout)[0]


def no_sessions(system: System):
    wait_until("every session of earlier tests to close", lambda: sum(system.sessions()) == 0, 15)


@pytest.fixture
def new_user(system, browser):
    """Makes logged-in users, each in a context of their own; closes them after."""
    contexts, users = [], []

    def make(name: str | None = None) -> User:
        user_id = next(_user_ids)
        context = browser.new_context(viewport=VIEWPORT, locale="vi-VN")
        contexts.append(context)
        user = User(user_id, name or f"User {user_id}", context, None, system.public)
        user.open_page()
        users.append(user)
        return user

    yield make
    for context in contexts:
        context.close()
    errors = [e for user in users for e in user.errors]
    assert not errors, f"errors in the page: {errors}"


@pytest.fixture
def pair(system, new_user):
    """A and B logged in, their sockets on different gateways (nginx
    balances least_conn per worker, so B may need a few tries)."""
    no_sessions(system)
    # A test before may have restarted a gateway that nginx still skips.
    system.balancer_settled()
    a = new_user("An")
    before = system.sessions()
    a.login()
    a.gateway = gateway_of(system, before)
    b = new_user("Bình")
    deadline = time.monotonic() + 20  # nginx skips a gateway 5 s after it failed
    while time.monotonic() < deadline:
        before = system.sessions()
        b.login()
        b.gateway = gateway_of(system, before)
        if b.gateway != a.gateway:
            break
        # Same gateway: leave (the session closes) and come back.
        b.page.close()
        wait_until("B's session to close", lambda: system.sessions() == before, 10)
        b.open_page()
    else:
        pytest.fail("B's socket never landed on the other gateway")
    yield a, b
    for user in (a, b):
        if not user.page.is_closed():
            user.page.close()
    no_sessions(system)
