// The DOM: draws what chat.js knows, and turns clicks and keys into calls on
// it. The `data-testid` attributes are stable hooks for automated tests.

import { bodyLimit, countChars } from './chat.js';

const $ = (id) => document.getElementById(id);

/** Within this many pixels of the bottom counts as "the newest is on screen". */
const AT_BOTTOM_PX = 48;
/** Within this many pixels of the top, the page before is fetched. */
const NEAR_TOP_PX = 150;

function element(tag, attributes = {}, text = '') {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) el.setAttribute(name, value);
  if (text) el.textContent = text;
  return el;
}

/** The viewer's language decides; Vietnamese reads a 24-hour clock. */
function vietnamese() {
  return navigator.language?.toLowerCase().startsWith('vi') ?? false;
}

function timeOf(iso) {
  const options = { hour: '2-digit', minute: '2-digit' };
  if (vietnamese()) options.hourCycle = 'h23';
  return new Date(iso).toLocaleTimeString(navigator.language, options);
}

/** A day's local date as `YYYY-MM-DD` (for grouping). */
function dayOf(date) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

/** "Hôm nay" / "Today", "Hôm qua" / "Yesterday", else the date. */
function dayLabel(date) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  const vi = vietnamese();
  if (dayOf(date) === dayOf(today)) return vi ? 'Hôm nay' : 'Today';
  if (dayOf(date) === dayOf(yesterday)) return vi ? 'Hôm qua' : 'Yesterday';
  return date.toLocaleDateString(navigator.language, { day: 'numeric', month: 'long', year: 'numeric' });
}

function atBottom(list) {
  return list.scrollHeight - list.scrollTop - list.clientHeight < AT_BOTTOM_PX;
}

export class View {
  #chat;
  #messageElements = new Map(); // key -> <li>, for the open conversation
  #shownConversation = null;
  #stickToBottom = false; // scroll to the newest on the next draw (opened, or we sent)

  constructor(chat) {
    this.#chat = chat;
    chat.addEventListener('list', () => this.#renderList());
    chat.addEventListener('presence', () => {
      this.#renderList();
      this.#renderHeader();
    });
    chat.addEventListener('messages', (e) => {
      if (e.detail.conversationId === chat.openId || e.detail.reset) this.#renderConversation(e.detail);
    });
    chat.addEventListener('typing', (e) => {
      if (e.detail.conversationId === chat.openId) this.#renderTyping();
    });
    chat.addEventListener('connection', (e) => this.#renderConnection(e.detail));
    chat.addEventListener('names', () => this.#renderNames());
    chat.addEventListener('reads', (e) => {
      if (e.detail.conversationId === chat.openId) this.#renderSeen();
    });
    chat.addEventListener('notice', (e) => this.#notice(e.detail.message));
    chat.addEventListener('privacy', () => {
      this.#renderPrivacy();
      this.#renderHeader();
    });
    this.#bind();
    $('me').textContent = `User ${chat.me}`;
    this.#renderList();
    this.#renderConversation({ reset: true });
  }

  #bind() {
    const chat = this.#chat;
    const list = $('messages');
    $('direct-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const peer = Number($('peer-id').value);
      if (!Number.isSafeInteger(peer) || peer <= 0) return this.#notice('A user id is a positive number.');
      chat.startDirect(peer).then(() => ($('peer-id').value = ''), (e) => this.#notice(e.message));
    });
    $('group-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const ids = $('group-members').value.split(/[\s,]+/).filter(Boolean).map(Number);
      chat.createGroup($('group-title').value.trim(), ids).then(() => {
        $('group-title').value = $('group-members').value = '';
      }, (e) => this.#notice(e.message));
    });
    $('conversations').addEventListener('click', (event) => {
      const item = event.target.closest('[data-conversation-id]');
      if (item) chat.openConversation(Number(item.dataset.conversationId));
    });
    $('back').addEventListener('click', () => chat.closeConversation());
    $('add-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const ids = $('add-ids').value.split(',').map((s) => Number(s.trim())).filter((n) => Number.isInteger(n) && n > 0);
      if (!ids.length || chat.openId == null) return;
      chat.addMembers(chat.openId, ids)
        .then(() => { $('add-ids').value = ''; })
        .catch((error) => this.#notice(`Could not add: ${error.message}`));
    });
    $('leave').addEventListener('click', () => {
      if (chat.openId == null) return;
      chat.leave(chat.openId).catch((error) => this.#notice(`Could not leave: ${error.message}`));
    });

    const save = (change) => chat.setPrivacy(change).catch((error) => {
      this.#notice(`Could not save: ${error.message}`);
      this.#renderPrivacy();
    });
    $('privacy-presence').addEventListener('change', (e) => save({ presence: e.target.value }));
    $('privacy-groups').addEventListener('change', (e) => save({ groups: e.target.value }));
    $('privacy-read-receipts').addEventListener('change', (e) => save({ read_receipts: e.target.checked }));
    for (const [id, blocked] of [['block', true], ['unblock', false]]) {
      $(id).addEventListener('click', () => {
        const peer = chat.peerOf(chat.open);
        if (peer == null) return;
        chat.setBlocked(peer, blocked).catch((error) => this.#notice(`Could not ${id}: ${error.message}`));
      });
    }

    const composer = $('composer');
    $('composer-form').addEventListener('submit', (event) => {
      event.preventDefault();
      this.#send();
    });
    composer.addEventListener('keydown', (event) => {
      // Enter sends, Shift+Enter is a new line; never while an input method
      // (Vietnamese Telex/VNI) is still composing a character.
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.#send();
      }
    });
    composer.addEventListener('input', () => {
      this.#renderCounter();
      if (composer.value && chat.openId) chat.typing(chat.openId);
    });

    list.addEventListener('scroll', () => {
      if (list.scrollTop < NEAR_TOP_PX && chat.openId) chat.loadOlder(chat.openId);
      this.#maybeMarkRead();
    });
    list.addEventListener('click', (event) => {
      const retry = event.target.closest('[data-testid="retry"]');
      if (retry) chat.retry(retry.closest('[data-client-msg-id]').dataset.clientMsgId);
    });
    $('older').addEventListener('click', () => chat.openId && chat.loadOlder(chat.openId));
    document.addEventListener('visibilitychange', () => this.#maybeMarkRead());
    window.addEventListener('focus', () => this.#maybeMarkRead());
  }

  #send() {
    const composer = $('composer');
    const id = this.#chat.openId;
    this.#stickToBottom = true; // our own message: show it, wherever we were
    if (id && this.#chat.send(id, composer.value)) {
      composer.value = '';
      this.#renderCounter();
    }
    composer.focus();
  }

  /** Read markers: only when the newest message is on screen and the tab is seen. */
  #maybeMarkRead() {
    const id = this.#chat.openId;
    if (id && document.visibilityState === 'visible' && atBottom($('messages'))) {
      this.#chat.markRead(id);
    }
  }

  // ---------------------------------------------------------------- list

  #renderList() {
    const chat = this.#chat;
    const list = $('conversations');
    const focused = document.activeElement?.dataset?.conversationId;
    list.replaceChildren(
      ...chat.sortedConversations().map((c) => {
        const button = element('button', {
          type: 'button',
          class: 'conversation',
          'data-testid': 'conversation',
          'data-conversation-id': c.id,
        });
        if (c.id === chat.openId) button.setAttribute('aria-current', 'true');
        const peer = chat.peerOf(c);
        if (peer != null) {
          const status = chat.presence.get(peer)?.status ?? 'offline';
          button.append(element('span', { class: `dot ${status}`, 'aria-label': status }));
        }
        button.append(avatar(chat, c), element('span', { class: 'title', ...nameHook(c) }, chat.titleOf(c)));
        if (c.unread_count > 0) {
          const label = `${c.unread_count} unread`;
          button.append(element('span', { class: 'unread', 'data-testid': 'unread', 'aria-label': label }, String(c.unread_count)));
        }
        const last = c.last_message;
        const preview = last ? `${last.sender_id === chat.me ? 'You: ' : ''}${last.body}` : 'No messages yet';
        button.append(element('span', { class: 'preview' }, preview));
        const item = element('li');
        item.append(button);
        return item;
      }),
    );
    if (focused) list.querySelector(`[data-conversation-id="${focused}"]`)?.focus();
    $('no-conversations').hidden = chat.conversations.size > 0;
  }

  // -------------------------------------------------------- conversation

  #renderConversation({ reset = false, older = false } = {}) {
    const chat = this.#chat;
    const conversation = chat.open;
    document.body.classList.toggle('reading', !!conversation);
    $('conversation').hidden = !conversation;
    $('placeholder').hidden = !!conversation;
    if (!conversation) return;
    const list = $('messages');
    if (reset || this.#shownConversation !== conversation.id) {
      this.#shownConversation = conversation.id;
      this.#messageElements.clear();
      list.replaceChildren();
      this.#stickToBottom = true;
      this.#renderHeader();
      this.#renderTyping();
      this.#renderList();
    }
    const wasAtBottom = atBottom(list);
    const [height, top] = [list.scrollHeight, list.scrollTop];
    this.#renderMessages(conversation);
    $('older').hidden = !conversation.hasOlder;
    $('loading').hidden = conversation.loaded;
    if (older) {
      list.scrollTop = top + (list.scrollHeight - height); // keep the same messages in view
    } else if (wasAtBottom || this.#stickToBottom) {
      list.scrollTop = list.scrollHeight;
    }
    if (conversation.loaded) this.#stickToBottom = false;
    // A first page shorter than the screen: fetch older ones until it is full.
    if (conversation.hasOlder && list.scrollHeight <= list.clientHeight) chat.loadOlder(conversation.id);
    this.#maybeMarkRead();
  }

  #renderHeader() {
    const chat = this.#chat;
    const conversation = chat.open;
    if (!conversation) return;
    $('conversation-avatar').replaceChildren(avatar(chat, conversation));
    $('add-form').hidden = conversation.kind !== 'group';
    const peer = chat.peerOf(conversation);
    const blocked = peer != null && chat.blocked.has(peer);
    $('block').hidden = peer == null || peer === chat.me || blocked;
    $('unblock').hidden = !blocked;
    $('composer').placeholder = blocked ? 'You blocked this person: unblock to write' : 'Message';
    $('conversation-title').replaceChildren(element('span', nameHook(conversation), chat.titleOf(conversation)));
    const slot = $('presence-slot');
    if (peer == null) return slot.replaceChildren();
    const { status = 'offline', last_seen: lastSeen } = chat.presence.get(peer) ?? {};
    const text = status === 'online' ? 'online' : lastSeen ? `offline, last seen ${timeOf(lastSeen)}` : 'offline';
    slot.replaceChildren(element('span', { class: `presence ${status}`, 'data-testid': 'presence', 'data-status': status }, text));
  }

  /**
   * Stored messages by seq, then our sends not stored yet. Elements are
   * keyed by sender and client_msg_id, so a pending message becomes the
   * stored one in place.
   */
  #renderMessages(conversation) {
    const chat = this.#chat;
    const list = $('messages');
    list.querySelectorAll('li.day').forEach((el) => el.remove());
    const items = [
      ...conversation.messages.map((m) => ({ ...m, state: 'stored' })),
      ...chat.unsentIn(conversation.id).map((e) => ({ ...e, sender_id: chat.me })),
    ];
    const keep = new Set();
    let cursor = list.firstElementChild;
    for (const item of items) {
      const key = `${item.sender_id}:${item.client_msg_id}`;
      keep.add(key);
      let el = this.#messageElements.get(key);
      if (!el) {
        el = this.#newMessageElement(item);
        this.#messageElements.set(key, el);
      }
      this.#updateMessageElement(el, item);
      if (el === cursor) cursor = cursor.nextElementSibling;
      else list.insertBefore(el, cursor);
    }
    for (const [key, el] of this.#messageElements) {
      if (!keep.has(key)) {
        el.remove();
        this.#messageElements.delete(key);
      }
    }
    this.#renderDays(items);
    this.#renderSeen();
  }

  #newMessageElement(item) {
    const mine = item.sender_id === this.#chat.me;
    const system = item.kind === 'system';
    const kind = system ? 'message system' : mine ? 'message mine' : 'message';
    const li = element('li', { class: kind, 'data-testid': 'message', 'data-kind': item.kind ?? 'user' });
    if (system) li.append(element('span', { 'data-testid': 'system-message', hidden: '' }));
    li.dataset.clientMsgId = item.client_msg_id;
    const meta = element('div', { class: 'meta' });
    const sender = system
      ? element('span', { class: 'sender' }, vietnamese() ? 'Thông báo' : 'Notice')
      : mine
        ? element('span', { class: 'sender' }, 'You')
        : element('span', { class: 'sender', 'data-testid': 'display-name', 'data-user-id': item.sender_id }, this.#chat.nameOf(item.sender_id));
    meta.append(sender, ' ', element('time', { datetime: item.created_at }, timeOf(item.created_at)));
    li.append(meta, element('p', { class: 'body' }, item.body));
    if (item.card) li.append(cardElement(item.card));
    li.append(element('div', { class: 'status' }));
    return li;
  }

  #updateMessageElement(el, item) {
    if (el.dataset.state === item.state && el.dataset.seq === String(item.seq)) return;
    el.dataset.state = item.state;
    const status = el.querySelector('.status');
    if (item.state === 'stored') {
      el.dataset.seq = item.seq;
      el.dataset.messageId = item.id;
      el.querySelector('time').textContent = timeOf(item.created_at);
      status.replaceChildren();
    } else if (item.state === 'pending') {
      status.replaceChildren(element('span', {}, 'Sending…'));
    } else {
      const retry = element('button', { type: 'button', 'data-testid': 'retry' }, 'Retry');
      status.replaceChildren(element('span', { class: 'error' }, `Not sent: ${item.error} `), retry);
    }
  }

  /** A day's heading before its first message ("Hôm nay", "Hôm qua", a date). */
  #renderDays(items) {
    let previous = null;
    for (const item of items) {
      const date = item.created_at ? new Date(item.created_at) : new Date(); // pending: now
      const day = dayOf(date);
      if (day === previous) continue;
      previous = day;
      const el = this.#messageElements.get(`${item.sender_id}:${item.client_msg_id}`);
      const heading = element('li', { class: 'day', 'data-testid': 'day', 'aria-hidden': 'true' }, dayLabel(date));
      el?.before(heading);
    }
  }

  /**
   * "Seen" under our last stored message that the peer has read; in a
   * group, "Seen by N" (the members who read that far).
   */
  #renderSeen() {
    const chat = this.#chat;
    const conversation = chat.open;
    document.querySelectorAll('#messages [data-testid="seen"]').forEach((el) => el.remove());
    if (!conversation) return;
    const readers = [...conversation.reads.values()];
    const mine = conversation.messages.filter((m) => m.sender_id === chat.me);
    const last = mine.findLast((m) => readers.some((seq) => seq >= m.seq));
    if (!last) return;
    const el = this.#messageElements.get(`${last.sender_id}:${last.client_msg_id}`);
    if (!el) return;
    const count = readers.filter((seq) => seq >= last.seq).length;
    const vi = navigator.language?.startsWith('vi');
    const text = conversation.kind === 'direct'
      ? (vi ? 'Đã xem' : 'Seen')
      : (vi ? `${count} người đã xem` : `Seen by ${count}`);
    el.append(element('div', { class: 'seen', 'data-testid': 'seen' }, text));
  }

  /** The privacy panel shows the settings as stored, and whom we block. */
  #renderPrivacy() {
    const chat = this.#chat;
    if (chat.privacy) {
      $('privacy-presence').value = chat.privacy.presence;
      $('privacy-groups').value = chat.privacy.groups;
      $('privacy-read-receipts').checked = chat.privacy.read_receipts;
    }
    const names = [...chat.blocked].map((id) => chat.nameOf(id));
    $('blocked-list').textContent = names.length ? names.join(', ') : 'nobody';
  }

  /** A name changed: every place that shows one says the new one. */
  #renderNames() {
    this.#renderList();
    this.#renderHeader();
    this.#renderTyping();
    for (const el of document.querySelectorAll('#messages [data-testid="display-name"][data-user-id]')) {
      el.textContent = this.#chat.nameOf(Number(el.dataset.userId));
    }
  }

  #renderTyping() {
    const chat = this.#chat;
    const slot = $('typing-slot');
    const typists = chat.openId ? chat.typists(chat.openId) : [];
    if (!typists.length) return slot.replaceChildren();
    const names = typists.map((id) => chat.nameOf(id)).join(', ');
    const text = `${names} ${typists.length > 1 ? 'are' : 'is'} typing…`;
    const shown = slot.querySelector('[data-testid="typing"]');
    if (shown) shown.textContent = text;
    else slot.replaceChildren(element('span', { 'data-testid': 'typing' }, text));
  }

  #renderCounter() {
    const count = countChars($('composer').value);
    const over = count > bodyLimit();
    const counter = $('counter');
    counter.textContent = `${count} / ${bodyLimit()}`;
    counter.classList.toggle('over', over);
    $('composer').setAttribute('aria-invalid', String(over));
    $('send').disabled = over;
  }

  #renderConnection({ state, retryInMs }) {
    const el = $('connection');
    el.dataset.state = state;
    el.textContent =
      state === 'open' ? 'Connected'
        : state === 'connecting' ? 'Connecting…'
          : retryInMs != null ? `Offline, retrying in ${Math.ceil(retryInMs / 1000)} s`
            : 'Offline';
  }

  #notice(message) {
    const el = $('notice');
    el.textContent = message;
    el.hidden = false;
    clearTimeout(this.noticeTimer);
    this.noticeTimer = setTimeout(() => (el.hidden = true), 6000);
  }
}

/**
 * The picture of a conversation: the peer's avatar (or initials) for a
 * direct one, the title's initials for a group.
 */
function avatar(chat, conversation) {
  const peer = chat.peerOf(conversation);
  const url = peer == null ? null : chat.users.get(peer)?.avatar_url;
  const attrs = { class: 'avatar', 'data-testid': 'avatar', 'aria-hidden': 'true' };
  if (url) return element('img', { ...attrs, src: url, alt: '' });
  return element('span', attrs, initials(chat.titleOf(conversation)));
}

/**
 * A message's card (a listing, a place): its picture, title and subtitle,
 * a link when it has a URL (the server allows only https:// URLs).
 */
function cardElement(card) {
  const el = card.url
    ? element('a', { class: 'card', 'data-testid': 'card', href: card.url, target: '_blank', rel: 'noopener noreferrer' })
    : element('div', { class: 'card', 'data-testid': 'card' });
  if (card.image_url) el.append(element('img', { src: card.image_url, alt: '', loading: 'lazy' }));
  el.append(element('strong', { 'data-testid': 'card-title' }, card.title));
  if (card.subtitle) el.append(element('span', { class: 'subtitle' }, card.subtitle));
  return el;
}

/** Up to two letters of a name: "Lan Nguyễn" -> "LN". */
function initials(name) {
  const words = name.trim().split(/\s+/).filter(Boolean);
  const letters = words.length > 1 ? [words[0], words[words.length - 1]] : words;
  return letters.map((w) => [...w][0]?.toUpperCase() ?? '').join('') || '?';
}

/** The test hook of a shown name: only direct conversations show a person's. */
function nameHook(conversation) {
  return conversation.kind === 'direct' ? { 'data-testid': 'display-name' } : {};
}
