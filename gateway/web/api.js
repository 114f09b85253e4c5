// The HTTP half of the contract: conversations, history, presence, and the
// dev login. Every request carries the token as `Authorization: Bearer`.

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

/** A 429 is retried after the server's `retry_after_ms`, this many times. */
const RATE_LIMIT_RETRIES = 3;
/**
 * A 502/503/504 (a gateway just died or is shutting down; the load balancer
 * answered) is retried this many times, for requests that are safe to repeat.
 */
const UNAVAILABLE_RETRIES = 2;

/**
 * The dev login (`POST /api/dev/token`): a token for any user id, where the
 * server enables it (local and test profiles). Null when it does not (404).
 */
export async function devToken(userId, name) {
  const response = await fetch('/api/dev/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(name ? { user_id: userId, name } : { user_id: userId }),
  });
  if (response.status === 404) return null;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body.error?.code, body.error?.message);
  return body.token;
}

export class Api {
  #token;

  constructor(token) {
    this.#token = token;
  }

  setToken(token) {
    this.#token = token;
  }

  /** `{conversations: [...]}`, most recent activity first. */
  conversations(limit = 200) {
    return this.#request('GET', `/api/conversations?limit=${limit}`);
  }

  /**
   * One page of history, ascending by seq: the newest page (no cursor), the
   * page before `beforeSeq` (scrolling up), or after `afterSeq` (catching up).
   */
  messages(conversationId, { beforeSeq, afterSeq, limit = 50 } = {}) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (beforeSeq != null) query.set('before_seq', String(beforeSeq));
    if (afterSeq != null) query.set('after_seq', String(afterSeq));
    return this.#request('GET', `/api/conversations/${conversationId}/messages?${query}`);
  }

  /** The direct conversation with `peerId` (the same one every time, so safe to repeat). */
  openDirect(peerId) {
    return this.#request('POST', '/api/conversations', { peer_id: peerId }, { repeatable: true });
  }

  /** A new group: not repeated by itself (a repeat would make a second group). */
  createGroup(title, memberIds) {
    return this.#request('POST', '/api/conversations', { title, member_ids: memberIds });
  }

  /** Adds people to a group; the group with its new members. */
  addMembers(conversationId, userIds) {
    const path = `/api/conversations/${conversationId}/members`;
    return this.#request('POST', path, { user_ids: userIds }, { repeatable: true });
  }

  /** Leaves a group (repeating it after a success answers 403, harmlessly). */
  leave(conversationId) {
    return this.#request('POST', `/api/conversations/${conversationId}/leave`, {});
  }

  /** `{reads: [{user_id, seq}]}`: how far the other members have read. */
  reads(conversationId) {
    return this.#request('GET', `/api/conversations/${conversationId}/reads`);
  }

  /** `{presence, read_receipts, groups}`: who sees what about us. */
  privacy() {
    return this.#request('GET', '/api/me/privacy');
  }

  /** Changes some of our privacy settings; answers all of them. */
  setPrivacy(change) {
    return this.#request('PUT', '/api/me/privacy', change, { repeatable: true });
  }

  /** `{blocked: [User]}`: the people we block. */
  blocks() {
    return this.#request('GET', '/api/blocks');
  }

  block(userId) {
    return this.#request('PUT', `/api/blocks/${userId}`, {}, { repeatable: true });
  }

  unblock(userId) {
    return this.#request('DELETE', `/api/blocks/${userId}`, undefined, { repeatable: true });
  }

  /** `{presence: [{user_id, status, last_seen}]}` for at most 200 ids. */
  presence(userIds) {
    return this.#request('GET', `/api/presence?user_ids=${userIds.join(',')}`);
  }

  async #request(method, path, body, { repeatable = method === 'GET' } = {}) {
    for (let attempt = 0; ; attempt += 1) {
      const response = await fetch(path, {
        method,
        headers: {
          Authorization: `Bearer ${this.#token}`,
          ...(body ? { 'Content-Type': 'application/json' } : {}),
        },
        body: body ? JSON.stringify(body) : undefined,
      });
      // 204 (blocks) has no body.
      const answer = await response.json().catch(() => ({}));
      if (response.ok) return answer;
      const error = answer.error ?? {};
      if (response.status === 429 && attempt < RATE_LIMIT_RETRIES) {
        await sleep(error.retry_after_ms ?? 1000);
        continue;
      }
      if (repeatable && [502, 503, 504].includes(response.status) && attempt < UNAVAILABLE_RETRIES) {
        await sleep(250 + Math.random() * 500);
        continue;
      }
      throw new ApiError(response.status, error.code, error.message);
    }
  }
}
