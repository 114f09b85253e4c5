// What the client knows, kept right by the protocol: conversations and their
// unread counts, each open conversation's messages in `seq` order with no
// gap and no repeat, our own sends until they are stored (the outbox),
// typing and presence. No DOM here: the view listens to the events.
//
// Events (a CustomEvent's `detail`):
//   list        the conversation list changed (titles, last messages, unread)
//   messages    {conversationId, older, reset}: that conversation's messages
//               changed (older: a page was added on top; reset: another one opened)
//   typing      {conversationId}
//   presence    someone's presence changed
//   privacy     our privacy settings or the people we block changed
//   connection  {state, code, retryInMs} (connection.js)
//   notice      {message}: something the user should know (a refused frame)
//   unauthorized  the token was refused (close code 4001)

/** The server's default `gateway.max_body_chars`. */
/** The longest body, in characters: the contract's 4,000, or what the
 * server's `hello` announces. */
let maxBodyChars = 4000;
export const bodyLimit = () => maxBodyChars;
const PAGE = 50;
const CATCH_UP_PAGE = 200;
/** While typing, `start` again every so often: the server lets a start lapse after 5 s. */
const TYPING_RENEW_MS = 3000;
/** Stop typing after this long without a keystroke. */
const TYPING_PAUSE_MS = 2000;
/** Hide someone's typing if neither a renewal nor a stop came for this long. */
const TYPING_SHOWN_MAX_MS = 10_000;
/** An `unavailable` send is sent again by itself this many times, then marked failed. */
const UNAVAILABLE_RETRIES = 3;

/**
 * Characters as the server counts them (Unicode scalar values, Rust's
 * `chars().count()`), of the text as it will be sent: NFC, so a Vietnamese
 * "ệ" typed as e + two combining marks counts (and is stored) as one.
 */
export function countChars(text) {
  return [...text.normalize('NFC')].length;
}

/** 128 random bits in hex: the send's idempotency key, kept across resends. */
function newClientMsgId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export class Chat extends EventTarget {
  /** id -> conversation (the server's object, plus what we hold of it). */
  conversations = new Map();
  /** client_msg_id -> {client_msg_id, conversation_id, body, state, error}. */
  outbox = new Map();
  /** user id -> {status, last_seen}. */
  presence = new Map();
  /** Our privacy settings (`GET /api/me/privacy`), null until loaded. */
  privacy = null;
  /** The ids of the people we block. */
  blocked = new Set();
  openId = null;

  #api;
  #connection;
  #typingOut = null; // {conversationId, at} while we are typing
  #typingStop = 0;

  constructor(api, connection, userId) {
    super();
    this.#api = api;
    this.#connection = connection;
    this.me = userId;
    /** Profiles by user id: the members of our conversations. */
    this.users = new Map();
    this.#loadOutbox();
    connection.addEventListener('state', (e) => this.#emit('connection', e.detail));
    connection.addEventListener('hello', (e) => this.#onHello(e.detail));
    connection.addEventListener('frame', (e) => this.#onFrame(e.detail));
    connection.addEventListener('unauthorized', () => this.#emit('unauthorized'));
  }

  start() {
    this.#connection.start();
    this.refreshConversations();
    this.#loadConsent();
  }

  // ------------------------------------------------------------ consent

  async #loadConsent() {
    try {
      const [privacy, { blocked }] = await Promise.all([this.#api.privacy(), this.#api.blocks()]);
      this.privacy = privacy;
      this.#learn(blocked);
      this.blocked = new Set(blocked.map((user) => user.id));
      this.#emit('privacy');
    } catch (error) {
      this.#notice(`Could not load privacy settings: ${error.message}`);
    }
  }

  /** Changes some of our settings (`{presence}`, `{read_receipts}`, `{groups}`). */
  async setPrivacy(change) {
    this.privacy = await this.#api.setPrivacy(change);
    this.#emit('privacy');
  }

  /**
   * Blocks or unblocks a user. While either blocks the other, sends in
   * their direct conversation are refused (`blocked`) and neither sees the
   * other's presence, typing or reads.
   */
  async setBlocked(userId, blocked) {
    if (blocked) await this.#api.block(userId);
    else await this.#api.unblock(userId);
    if (blocked) this.blocked.add(userId);
    else this.blocked.delete(userId);
    this.#emit('privacy');
  }

  // ------------------------------------------------------------ reading

  get open() {
    return this.conversations.get(this.openId) ?? null;
  }

  /** The other member of a direct conversation. */
  peerOf(conversation) {
    if (conversation?.kind !== 'direct') return null;
    return conversation.member_ids.find((id) => id !== this.me) ?? this.me;
  }

  titleOf(conversation) {
    return conversation.title ?? this.nameOf(this.peerOf(conversation));
  }

  /** A user's name as the host site gave it, or their id when it gave none. */
  nameOf(userId) {
    return this.users.get(userId)?.name ?? `User ${userId}`;
  }

  /** Remembers profiles (a conversation's `members`, a `user` frame). */
  #learn(users = []) {
    for (const user of users) this.users.set(user.id, user);
  }

  /** Our sends to this conversation not stored yet, in sending order. */
  unsentIn(conversationId) {
    return [...this.outbox.values()].filter((e) => e.conversation_id === conversationId);
  }

  /** Conversations, most recent activity first. */
  sortedConversations() {
    const activity = (c) => c.last_message?.created_at ?? c.created_at;
    return [...this.conversations.values()].sort((a, b) =>
      activity(b).localeCompare(activity(a)),
    );
  }

  // ------------------------------------------------------ conversations

  async refreshConversations() {
    try {
      const { conversations } = await this.#api.conversations();
      for (const conversation of conversations) this.#merge(conversation);
      this.#emit('list');
      await this.refreshPresence();
      for (const conversation of this.conversations.values()) {
        if (conversation.loaded) {
          this.#catchUp(conversation);
          this.#loadReads(conversation);
        }
      }
    } catch (error) {
      this.#notice(`Could not load conversations: ${error.message}`);
    }
  }

  async startDirect(peerId) {
    const conversation = this.#merge(await this.#api.openDirect(peerId));
    this.#emit('list');
    this.refreshPresence([peerId]);
    this.openConversation(conversation.id);
  }

  async addMembers(conversationId, memberIds) {
    this.#merge(await this.#api.addMembers(conversationId, memberIds), { counts: false });
    this.#emit('list');
    this.#emit('messages', { conversationId, reset: true });
  }

  async leave(conversationId) {
    await this.#api.leave(conversationId);
    this.#forget(conversationId);
  }

  /** A conversation we are no longer in leaves the list (and the screen). */
  #forget(conversationId) {
    if (this.openId === conversationId) this.closeConversation();
    this.conversations.delete(conversationId);
    this.#emit('list');
  }

  async createGroup(title, memberIds) {
    const conversation = this.#merge(await this.#api.createGroup(title, memberIds));
    this.#emit('list');
    this.openConversation(conversation.id);
  }

  openConversation(id) {
    this.stopTyping();
    this.openId = id;
    const conversation = this.open;
    this.#emit('messages', { conversationId: id, reset: true });
    this.#emit('typing', { conversationId: id });
    if (conversation && !conversation.loaded) this.#loadNewest(conversation);
  }

  closeConversation() {
    this.stopTyping();
    this.openId = null;
    this.#emit('messages', { conversationId: null, reset: true });
  }

  /** A conversation from the server (list, create, `conversation` frame). */
  /**
   * `counts: false` for a `conversation` frame: its unread count and last
   * message are those of whoever changed the group, not ours.
   */
  #merge(incoming, { counts = true } = {}) {
    this.#learn(incoming.members);
    const known = this.conversations.get(incoming.id);
    if (!known) {
      const conversation = {
        ...incoming,
        loaded: false, // messages below hold a contiguous run of seq, newest included
        messages: [],
        high: 0, // highest seq held (when loaded)
        hasOlder: false,
        loadingOlder: false,
        catchingUp: null,
        catchUpAgain: false,
        readSent: 0,
        reads: new Map(), // other member's id -> the highest seq they read
        typing: new Map(), // user id -> timer
      };
      this.conversations.set(incoming.id, conversation);
      return conversation;
    }
    Object.assign(known, {
      kind: incoming.kind,
      title: incoming.title,
      member_ids: incoming.member_ids,
    });
    // A list older than what the socket has told us since keeps ours.
    if (counts && incoming.last_seq >= known.last_seq) {
      known.last_seq = incoming.last_seq;
      known.last_message = incoming.last_message;
      known.unread_count = incoming.unread_count;
    }
    return known;
  }

  // ----------------------------------------------------------- messages

  /** Read markers move only forward. */
  #onRead({ conversation_id: id, user_id: userId, seq }) {
    const conversation = this.conversations.get(id);
    if (!conversation || userId === this.me) return;
    if (seq > (conversation.reads.get(userId) ?? 0)) conversation.reads.set(userId, seq);
    this.#emit('reads', { conversationId: id });
  }

  /** How far the others have read, from the server (after a reconnect). */
  async #loadReads(conversation) {
    try {
      const { reads } = await this.#api.reads(conversation.id);
      for (const read of reads) this.#onRead({ conversation_id: conversation.id, ...read });
    } catch (error) {
      this.#notice(`Could not load read receipts: ${error.message}`);
    }
  }

  async #loadNewest(conversation) {
    this.#loadReads(conversation);
    try {
      const { messages } = await this.#api.messages(conversation.id, { limit: PAGE });
      conversation.messages = messages;
      conversation.high = messages.at(-1)?.seq ?? 0;
      conversation.hasOlder = (messages[0]?.seq ?? 1) > 1;
      conversation.loaded = true;
      for (const message of messages) this.#stored(message);
      this.#emit('messages', { conversationId: conversation.id });
      // Anything stored while the page was on its way comes now.
      if (conversation.last_seq > conversation.high) this.#catchUp(conversation);
    } catch (error) {
      this.#notice(`Could not load messages: ${error.message}`);
    }
  }

  /** The page before the oldest message held (the user scrolled up). */
  async loadOlder(conversationId) {
    const conversation = this.conversations.get(conversationId);
    if (!conversation?.loaded || !conversation.hasOlder || conversation.loadingOlder) return;
    conversation.loadingOlder = true;
    try {
      const low = conversation.messages[0]?.seq ?? conversation.high + 1;
      const { messages } = await this.#api.messages(conversationId, { beforeSeq: low, limit: PAGE });
      const older = messages.filter((m) => m.seq < low);
      conversation.messages = [...older, ...conversation.messages];
      conversation.hasOlder = (older[0]?.seq ?? 1) > 1;
      this.#emit('messages', { conversationId, older: true });
    } catch (error) {
      this.#notice(`Could not load older messages: ${error.message}`);
    } finally {
      conversation.loadingOlder = false;
    }
  }

  /**
   * Fills the gap after the newest message held, from history
   * (`after_seq`): after a reconnect, or when a message arrives with a seq
   * past the next one. One fill at a time per conversation; a request for
   * another while one runs makes it go round once more.
   */
  #catchUp(conversation) {
    if (conversation.catchingUp) {
      conversation.catchUpAgain = true;
      return conversation.catchingUp;
    }
    conversation.catchingUp = (async () => {
      try {
        let full = true;
        while (full || conversation.catchUpAgain) {
          conversation.catchUpAgain = false;
          const { messages } = await this.#api.messages(conversation.id, {
            afterSeq: conversation.high,
            limit: CATCH_UP_PAGE,
          });
          const before = conversation.high;
          for (const message of messages) this.#append(conversation, message);
          // Another page if this one was full (and moved us on at all).
          full = messages.length === CATCH_UP_PAGE && conversation.high > before;
        }
      } catch (error) {
        this.#notice(`Could not catch up: ${error.message}`);
      } finally {
        conversation.catchingUp = null;
        this.#emit('messages', { conversationId: conversation.id });
      }
    })();
    return conversation.catchingUp;
  }

  /** A stored message from the socket (`message`, or `ack` of our send). */
  #onStored(message) {
    const conversation = this.conversations.get(message.conversation_id);
    if (!conversation) {
      // A conversation we have not heard of yet: the list brings it.
      this.refreshConversations();
      return;
    }
    if (message.seq > conversation.last_seq) {
      conversation.last_seq = message.seq;
      conversation.last_message = message;
      if (message.sender_id !== this.me) conversation.unread_count += 1;
      this.#emit('list');
    }
    if (conversation.typing.has(message.sender_id)) {
      this.#onTyping({ conversation_id: message.conversation_id, user_id: message.sender_id, state: 'stop' });
    }
    if (!conversation.loaded) {
      this.#stored(message);
      return;
    }
    if (message.seq <= conversation.high) {
      // Held already (a repeat after a crash, or history came first): drop it.
      if (this.#stored(message)) this.#emit('messages', { conversationId: conversation.id });
      return;
    }
    if (message.seq === conversation.high + 1) {
      this.#append(conversation, message);
      this.#emit('messages', { conversationId: conversation.id });
    } else {
      this.#catchUp(conversation); // a gap: history has what is missing, this one too
    }
  }

  #append(conversation, message) {
    if (message.seq !== conversation.high + 1) return; // held already, or not contiguous
    conversation.messages.push(message);
    conversation.high = message.seq;
    this.#stored(message);
  }

  /** Our send is stored, however we learnt it (ack, message, history). */
  #stored(message) {
    if (message.sender_id !== this.me || !this.outbox.delete(message.client_msg_id)) return false;
    this.#saveOutbox();
    return true;
  }

  // -------------------------------------------------------------- sends

  /** Sends `text` to a conversation; false when it is empty or too long. */
  send(conversationId, text) {
    const body = text.normalize('NFC');
    if (!body.trim() || countChars(body) > maxBodyChars) return false;
    this.stopTyping();
    const entry = {
      client_msg_id: newClientMsgId(),
      conversation_id: conversationId,
      body,
      state: 'pending',
      created_at: new Date().toISOString(),
      attempts: 0,
      error: null,
    };
    this.outbox.set(entry.client_msg_id, entry);
    this.#transmit(entry);
    return true;
  }

  /** The retry button: the same client_msg_id, so it is never stored twice. */
  retry(clientMsgId) {
    const entry = this.outbox.get(clientMsgId);
    if (!entry) return;
    entry.attempts = 0;
    this.#transmit(entry);
  }

  /** Sends a pending entry now, or leaves it pending for the next hello. */
  #transmit(entry) {
    entry.state = 'pending';
    entry.error = null;
    this.#saveOutbox();
    this.#connection.send({
      type: 'send',
      conversation_id: entry.conversation_id,
      client_msg_id: entry.client_msg_id,
      body: entry.body,
    });
    this.#emit('messages', { conversationId: entry.conversation_id });
  }

  #onSendRefused(entry, frame) {
    if (frame.code === 'rate_limited') {
      // Nothing was stored: the same send again, once the server allows it.
      setTimeout(() => this.outbox.has(entry.client_msg_id) && this.#transmit(entry), frame.retry_after_ms ?? 1000);
      return;
    }
    if (frame.code === 'unavailable' && entry.attempts < UNAVAILABLE_RETRIES) {
      entry.attempts += 1;
      const wait = 1000 * 2 ** entry.attempts;
      setTimeout(() => this.outbox.has(entry.client_msg_id) && this.#transmit(entry), wait);
      return;
    }
    entry.state = 'failed';
    entry.error = frame.message || frame.code;
    this.#saveOutbox();
    this.#emit('messages', { conversationId: entry.conversation_id });
  }

  // Pending sends survive a reload of the page (same tab), so a message
  // typed just before is sent, once, when the page comes back.
  #saveOutbox() {
    const entries = [...this.outbox.values()];
    sessionStorage.setItem(`mapmo-chat.outbox.${this.me}`, JSON.stringify(entries));
  }

  #loadOutbox() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(`mapmo-chat.outbox.${this.me}`) ?? '[]');
      for (const entry of saved) this.outbox.set(entry.client_msg_id, entry);
    } catch {
      // Nothing usable saved.
    }
  }

  // ------------------------------------------------------ typing, reads

  /** Called on every keystroke in the composer. */
  typing(conversationId) {
    const now = Date.now();
    const typing = this.#typingOut;
    if (!typing || typing.conversationId !== conversationId || now - typing.at > TYPING_RENEW_MS) {
      if (typing && typing.conversationId !== conversationId) this.stopTyping();
      this.#connection.send({ type: 'typing', conversation_id: conversationId, state: 'start' });
      this.#typingOut = { conversationId, at: now };
    }
    clearTimeout(this.#typingStop);
    this.#typingStop = setTimeout(() => this.stopTyping(), TYPING_PAUSE_MS);
  }

  stopTyping() {
    clearTimeout(this.#typingStop);
    if (!this.#typingOut) return;
    const conversation_id = this.#typingOut.conversationId;
    this.#typingOut = null;
    this.#connection.send({ type: 'typing', conversation_id, state: 'stop' });
  }

  /** Who else is typing in a conversation. */
  typists(conversationId) {
    return [...(this.conversations.get(conversationId)?.typing.keys() ?? [])];
  }

  /**
   * The user has seen the newest message of a conversation (the view calls
   * this when it is on screen and the tab is visible).
   */
  markRead(conversationId) {
    const conversation = this.conversations.get(conversationId);
    if (!conversation?.loaded) return;
    if (conversation.unread_count !== 0) {
      conversation.unread_count = 0;
      this.#emit('list');
    }
    const seq = conversation.high;
    if (seq <= conversation.readSent) return;
    if (this.#connection.send({ type: 'read', conversation_id: conversationId, seq })) {
      conversation.readSent = seq;
    }
  }

  // ----------------------------------------------------------- presence

  /** Asks for the presence of `userIds` (default: every direct peer). */
  async refreshPresence(userIds) {
    const ids = userIds ?? [
      ...new Set([...this.conversations.values()].map((c) => this.peerOf(c)).filter(Boolean)),
    ];
    try {
      for (let i = 0; i < ids.length; i += 200) {
        const { presence } = await this.#api.presence(ids.slice(i, i + 200));
        for (const p of presence) this.presence.set(p.user_id, p);
      }
      if (ids.length) this.#emit('presence');
    } catch (error) {
      this.#notice(`Could not load presence: ${error.message}`);
    }
  }

  // ------------------------------------------------------------- frames

  /** A new session (first connect or reconnect): resend, then catch up. */
  #onHello(hello) {
    this.me = hello.user_id;
    // The server says how long a body may be (docs/protocol.md); the
    // contract's 4,000 until it does.
    if (Number.isInteger(hello.max_body_chars)) maxBodyChars = hello.max_body_chars;
    for (const conversation of this.conversations.values()) conversation.readSent = 0;
    // Every pending send again, in order, with its same client_msg_id: the
    // ones stored before the connection dropped come back as the original.
    for (const entry of this.outbox.values()) {
      if (entry.state === 'pending') this.#transmit(entry);
    }
    this.#typingOut = null;
    this.refreshConversations();
  }

  #onFrame(frame) {
    switch (frame.type) {
      case 'message': // someone's message, or ours sent from another session
      case 'ack': // our send is stored: it leaves the outbox once it is in place
        this.#onStored(frame.message);
        break;
      case 'typing':
        this.#onTyping(frame);
        break;
      case 'presence':
        this.presence.set(frame.user_id, frame);
        this.#emit('presence');
        break;
      case 'conversation': // a new conversation, or a group's members changed
        if (!frame.conversation.member_ids.includes(this.me)) {
          this.#forget(frame.conversation.id); // we left it (on another device, maybe)
          break;
        }
        this.#merge(frame.conversation, { counts: false });
        this.#emit('list');
        this.refreshPresence([this.peerOf(frame.conversation)].filter(Boolean));
        break;
      case 'read': // another member read up to frame.seq: "seen"
        this.#onRead(frame);
        break;
      case 'user': // someone we share a conversation with changed name or avatar
        this.#learn([frame.user]);
        this.#emit('names');
        break;
      case 'error': {
        const entry = this.outbox.get(frame.client_msg_id);
        if (entry) this.#onSendRefused(entry, frame);
        else this.#notice(frame.message || frame.code);
        break;
      }
      default:
        break; // a frame type added after this client was written
    }
  }

  #onTyping({ conversation_id, user_id, state }) {
    const conversation = this.conversations.get(conversation_id);
    if (!conversation || user_id === this.me) return;
    clearTimeout(conversation.typing.get(user_id));
    if (state === 'start') {
      const lapse = setTimeout(() => {
        conversation.typing.delete(user_id);
        this.#emit('typing', { conversationId: conversation_id });
      }, TYPING_SHOWN_MAX_MS);
      conversation.typing.set(user_id, lapse);
    } else {
      conversation.typing.delete(user_id);
    }
    this.#emit('typing', { conversationId: conversation_id });
  }

  #notice(message) {
    this.#emit('notice', { message });
  }

  #emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
