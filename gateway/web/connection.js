// One logical connection to the chat system: a WebSocket that authenticates
// with the first-frame `auth`, keeps itself alive with `ping`, and reconnects
// with jittered back-off whenever it closes. It knows nothing about
// conversations: it hands every frame to its listeners (docs/client.md).
//
// Events (a CustomEvent's `detail`):
//   state         {state, code, retryInMs}  state: connecting | open | closed
//   hello         the server's hello frame (a new session: resend, catch up)
//   frame         any other server frame
//   unauthorized  close code 4001: the token is refused or expired

export const State = Object.freeze({
  CONNECTING: 'connecting',
  OPEN: 'open',
  CLOSED: 'closed',
});

/** Close codes the client acts on (shared/protocol.md, docs/protocol.md). */
const Close = Object.freeze({
  SERVICE_RESTART: 1012, // the gateway is shutting down: reconnect at once, elsewhere
  TRY_AGAIN_LATER: 1013, // this session fell behind: reconnect and catch up
  UNAUTHORIZED: 4001, // bad or expired token: get a new one
  TOO_MANY_SESSIONS: 4029, // this user has too many tabs open on that gateway
});

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 15_000;
const TOO_MANY_SESSIONS_WAIT_MS = 30_000;
/** No answer (pong or anything else) this long after a ping: the link is dead. */
const PONG_TIMEOUT_MS = 10_000;
/** The socket must open and say hello within this, or we try again. */
const OPEN_TIMEOUT_MS = 10_000;

const random = (maxMs) => Math.floor(Math.random() * maxMs);

export class Connection extends EventTarget {
  #url;
  #token;
  #socket = null;
  #state = State.CLOSED;
  #stopped = true;
  #attempt = 0; // consecutive failed attempts, for the back-off
  #timers = { retry: 0, ping: 0, pong: 0, open: 0 };

  /** `url` is the WebSocket URL (ws://host/ws); `token` the JWT. */
  constructor(url, token) {
    super();
    this.#url = url;
    this.#token = token;
    // A laptop waking up or a phone back in coverage: try now, not later.
    window.addEventListener('online', () => this.#retryNow());
  }

  get state() {
    return this.#state;
  }

  start() {
    this.#stopped = false;
    this.#connect();
  }

  /** Closes for good (logout). */
  stop() {
    this.#stopped = true;
    this.#drop(1000, 'bye');
    this.#setState(State.CLOSED);
  }

  /** Use a fresh token from the next connection on (after 4001). */
  setToken(token) {
    this.#token = token;
  }

  /** Sends one frame if the session is open; false when it is not. */
  send(frame) {
    if (this.#state !== State.OPEN) return false;
    this.#socket.send(JSON.stringify(frame));
    return true;
  }

  #connect() {
    this.#clearTimers();
    this.#setState(State.CONNECTING);
    const socket = new WebSocket(this.#url);
    this.#socket = socket;
    // Never put the token in the URL: it would end up in logs. It is the
    // first frame instead, and the server closes with 4001 if it is not.
    socket.onopen = () => socket.send(JSON.stringify({ type: 'auth', token: this.#token }));
    socket.onmessage = (event) => this.#onMessage(event.data);
    socket.onclose = (event) => this.#onClose(event.code);
    // An error is always followed by a close event: handled there.
    socket.onerror = () => {};
    this.#timers.open = setTimeout(() => this.#lost(), OPEN_TIMEOUT_MS);
  }

  #onMessage(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // not ours to understand; the contract only sends JSON
    }
    clearTimeout(this.#timers.pong); // anything heard proves the link is alive
    if (frame.type === 'hello') {
      clearTimeout(this.#timers.open);
      this.#attempt = 0;
      this.#startHeartbeat(frame.heartbeat_ms);
      this.#setState(State.OPEN);
      this.#emit('hello', frame);
    } else if (frame.type !== 'pong') {
      this.#emit('frame', frame);
    }
  }

  /** Our own `ping` every heartbeat: a link that died silently (Wi-Fi
   * gone, a NAT that forgot us) shows up within PONG_TIMEOUT_MS. */
  #startHeartbeat(heartbeatMs) {
    const every = Math.max(1000, heartbeatMs || 30_000);
    this.#timers.ping = setInterval(() => {
      if (!this.send({ type: 'ping' })) return;
      clearTimeout(this.#timers.pong);
      this.#timers.pong = setTimeout(() => this.#lost(), PONG_TIMEOUT_MS);
    }, every);
  }

  /** The link is dead without a close frame: give up on it and retry. */
  #lost() {
    this.#drop(4000, 'no answer');
    this.#onClose(1006);
  }

  #onClose(code) {
    this.#drop();
    if (this.#stopped) return;
    if (code === Close.UNAUTHORIZED) {
      this.#stopped = true;
      this.#setState(State.CLOSED, code);
      this.#emit('unauthorized', { code });
      return;
    }
    let delay;
    if (code === Close.SERVICE_RESTART || code === Close.TRY_AGAIN_LATER) {
      // At once (the load balancer picks another gateway), with a little
      // jitter so thousands of clients of one gateway do not arrive together.
      delay = random(250);
    } else if (code === Close.TOO_MANY_SESSIONS) {
      delay = TOO_MANY_SESSIONS_WAIT_MS + random(5000);
    } else {
      // "Full jitter" exponential back-off: 0..min(cap, base * 2^attempt).
      delay = random(Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.#attempt));
      this.#attempt += 1;
    }
    this.#setState(State.CLOSED, code, delay);
    this.#timers.retry = setTimeout(() => this.#connect(), delay);
  }

  #retryNow() {
    if (this.#stopped || this.#state !== State.CLOSED) return;
    this.#connect();
  }

  /** Forgets the current socket (its late events are ignored). */
  #drop(code, reason) {
    this.#clearTimers();
    const socket = this.#socket;
    this.#socket = null;
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onclose = null;
    if (code && socket.readyState <= WebSocket.OPEN) socket.close(code, reason);
  }

  #clearTimers() {
    clearTimeout(this.#timers.retry);
    clearInterval(this.#timers.ping);
    clearTimeout(this.#timers.pong);
    clearTimeout(this.#timers.open);
  }

  #setState(state, code = null, retryInMs = null) {
    this.#state = state;
    this.#emit('state', { state, code, retryInMs });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
