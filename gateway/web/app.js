// The web client's entry point: log in, then wire the connection, the chat
// state and the view together. How the client uses the protocol, for app
// developers: docs/client.md.
//
//   api.js         HTTP: dev login, conversations, history, presence
//   connection.js  the WebSocket: auth frame, ping, reconnect with back-off
//   chat.js        state kept right: seq order, gaps, outbox, unread, typing
//   view.js        the DOM

import { Api, devToken } from './api.js';
import { Connection } from './connection.js';
import { Chat } from './chat.js';
import { View } from './view.js';

const $ = (id) => document.getElementById(id);

/** Kept for this tab only (sessionStorage), so a reload stays logged in. */
const SESSION_KEY = 'mapmo-chat.session';

/** The claims of a JWT, read (not verified: the server does that). */
function claimsOf(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

async function login(event) {
  event.preventDefault();
  const error = $('login-error');
  error.textContent = '';
  const pasted = $('token').value.trim();
  try {
    if (pasted) {
      const claims = claimsOf(pasted);
      if (!claims?.sub) throw new Error('That does not look like a token.');
      return start({ token: pasted, userId: Number(claims.sub), name: claims.name ?? null, dev: false });
    }
    const userId = Number($('user-id').value.trim());
    if (!Number.isSafeInteger(userId) || userId <= 0) throw new Error('A user id is a positive number.');
    const name = $('display-name').value.trim() || null;
    const token = await devToken(userId, name);
    if (!token) throw new Error('This server has no dev login: paste a token instead.');
    start({ token, userId, name, dev: true });
  } catch (e) {
    error.textContent = e.message;
  }
}

function start(session) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  const socketUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  const api = new Api(session.token);
  const connection = new Connection(socketUrl, session.token);
  const chat = new Chat(api, connection, session.userId);
  new View(chat);

  chat.addEventListener('unauthorized', async () => {
    // The token expired or was refused. With the dev login we can get a
    // fresh one ourselves; a pasted token must be pasted again.
    const token = session.dev ? await devToken(session.userId, session.name).catch(() => null) : null;
    if (!token) return logout('Your session has ended: log in again.');
    session.token = token;
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    api.setToken(token);
    connection.setToken(token);
    connection.start();
  });
  $('logout').addEventListener('click', () => {
    connection.stop();
    logout();
  });

  $('login').hidden = true;
  $('chat').hidden = false;
  if (session.name) $('me').textContent = `${session.name} (${session.userId})`;
  chat.start();
}

function logout(message) {
  sessionStorage.clear();
  if (message) sessionStorage.setItem('mapmo-chat.notice', message);
  location.reload();
}

$('login-form').addEventListener('submit', login);
const notice = sessionStorage.getItem('mapmo-chat.notice');
if (notice) {
  $('login-error').textContent = notice;
  sessionStorage.removeItem('mapmo-chat.notice');
}
const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? 'null');
if (saved?.token) start(saved);
