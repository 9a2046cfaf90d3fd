// Shared helpers for the centrifuge-js compatibility tests: stack addresses, the
// REST API, HS256 token minting, a frame-recording WebSocket and small waits.
//
// Nothing here changes how centrifuge-js behaves. The recording WebSocket is the
// `ws` class with a listener added, so that a failing test can say exactly which
// frames the SDK sent and what the gateway answered.

import assert from 'node:assert/strict';
import { createHmac, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..', '..');

/** Stack settings: process env first, then `.dev/env` of the repository. */
export function loadEnv() {
  const file = process.env.CONFAB_ENV_FILE || path.join(repoRoot, '.dev', 'env');
  const fromFile = {};
  if (existsSync(file)) {
    for (const raw of readFileSync(file, 'utf8').split('\n')) {
      const line = raw.trim().replace(/^export\s+/, '');
      if (!line || line.startsWith('#') || !line.includes('=')) continue;
      const i = line.indexOf('=');
      let value = line.slice(i + 1).trim();
      if ((value.startsWith('"') && value.endsWith('"')) || (value.startsWith("'") && value.endsWith("'"))) {
        value = value.slice(1, -1);
      }
      fromFile[line.slice(0, i).trim()] = value;
    }
  }
  const get = (k) => process.env[k] || fromFile[k];
  const env = {
    apiUrl: get('CONFAB_API_URL'),
    wsUrl: get('CONFAB_WS_URL'),
    jwtSecret: get('CONFAB_JWT_SECRET'),
  };
  for (const [k, v] of Object.entries(env)) {
    if (!v) throw new Error(`missing ${k}: set CONFAB_API_URL/CONFAB_WS_URL/CONFAB_JWT_SECRET or run ops/dev up -d (reads ${file})`);
  }
  env.apiUrl = env.apiUrl.replace(/\/+$/, '');
  return env;
}

export const ENV = loadEnv();

// ---------------------------------------------------------------- REST

export async function api(method, pathname, { body, token, expect } = {}) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(ENV.apiUrl + pathname, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (expect !== undefined && res.status !== expect) {
    throw new Error(`${method} ${pathname}: expected ${expect}, got ${res.status}: ${text}`);
  }
  return { status: res.status, json, text };
}

const PASSWORD = 'sdk-test-password-1';

/** Registers a fresh user; returns {user:{id,username}, token, password}. */
export async function registerUser(prefix = 'js') {
  const username = `${prefix}_${randomBytes(6).toString('hex')}`;
  const { json } = await api('POST', '/api/auth/register', { body: { username, password: PASSWORD }, expect: 201 });
  assert.equal(json.user.username, username);
  return { user: json.user, token: json.token, password: PASSWORD };
}

export async function login(u) {
  const { json } = await api('POST', '/api/auth/login', { body: { username: u.user.username, password: u.password }, expect: 200 });
  return json.token;
}

export async function createRoom(owner, visibility = 'public') {
  const { json } = await api('POST', '/api/rooms', {
    body: { name: `sdk room ${randomBytes(3).toString('hex')}`, visibility },
    token: owner.token,
    expect: 201,
  });
  assert.equal(json.channel, `room:${json.id}`);
  return json;
}

export async function joinRoom(u, room) {
  return (await api('POST', `/api/rooms/${room.id}/join`, { body: {}, token: u.token, expect: 200 })).json;
}

export async function subscriptionToken(u, room) {
  return (await api('POST', `/api/rooms/${room.id}/subscription-token`, { token: u.token, expect: 200 })).json.token;
}

// ---------------------------------------------------------------- JWT (HS256)

const b64url = (buf) => Buffer.from(buf).toString('base64url');

export function signHs256(claims, secret = ENV.jwtSecret) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

const now = () => Math.floor(Date.now() / 1000);

/** A connection (access) token like auth-api's, with a chosen lifetime (may be negative). */
export function mintAccess(u, ttlSecs, secret) {
  const iat = now();
  return signHs256({ sub: u.user.id, name: u.user.username, iat, exp: iat + ttlSecs, iss: 'confab', aud: 'confab' }, secret);
}

/** A subscription token like auth-api's, with a chosen lifetime (may be negative). */
export function mintSub(u, channel, ttlSecs, { secret, sub } = {}) {
  const iat = now();
  return signHs256({ sub: sub || u.user.id, channel, iat, exp: iat + ttlSecs, iss: 'confab', aud: 'confab:subscription' }, secret);
}

export const forgedSecret = () => 'not-the-secret-' + randomUUID();

// ---------------------------------------------------------------- recording WebSocket

/**
 * Returns {WS, frames}: a WebSocket class for centrifuge-js's `websocket` option and
 * the list of JSON messages it saw ({dir: 'out'|'in', msg}). JSON frames may carry
 * several newline-separated messages; each is recorded.
 */
export function recordingWebSocket() {
  const frames = [];
  const sockets = [];
  const record = (dir, data) => {
    const text = typeof data === 'string' ? data : Buffer.from(data).toString('utf8');
    const lines = text.split('\n').filter((l) => l.trim());
    for (const line of lines) {
      const batch = lines.length;
      try { frames.push({ dir, msg: JSON.parse(line), at: Date.now(), batch }); } catch { frames.push({ dir, raw: line, at: Date.now(), batch }); }
    }
  };
  class WS extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
      this.on('message', (data) => record('in', data));
      this.on('close', (code, reason) => frames.push({ dir: 'close', code, reason: String(reason), at: Date.now() }));
    }
    send(data, ...rest) {
      record('out', data);
      return super.send(data, ...rest);
    }
  }
  return { WS, frames, sockets };
}

/** The reply to the first outgoing command of the given kind after index `from`. */
export function replyTo(frames, kind, from = 0) {
  const out = frames.slice(from).find((f) => f.dir === 'out' && f.msg && f.msg[kind] !== undefined);
  if (!out) return null;
  const reply = frames.find((f) => f.dir === 'in' && f.msg && f.msg.id === out.msg.id && f.at >= out.at);
  return { cmd: out.msg, reply: reply ? reply.msg : null };
}

export function allReplies(frames, kind) {
  const outs = frames.filter((f) => f.dir === 'out' && f.msg && f.msg[kind] !== undefined);
  return outs.map((o) => ({ cmd: o.msg, reply: (frames.find((f) => f.dir === 'in' && f.msg && f.msg.id === o.msg.id && f.at >= o.at) || {}).msg || null }));
}

export function dumpFrames(frames, last = 40) {
  return frames.slice(-last).map((f) => `${f.dir} ${f.msg ? JSON.stringify(f.msg) : f.raw ?? `code=${f.code} reason=${f.reason}`}`).join('\n');
}

// ---------------------------------------------------------------- clients

const opened = new Set();

/**
 * A Centrifuge client for user `u`. The connection token comes from the SDK's getToken
 * (a fresh login by default; `opts.getToken` overrides). Returns {c, frames, tokenCalls, events}.
 */
export function newClient(u, opts = {}) {
  const { WS, frames, sockets } = recordingWebSocket();
  const state = { tokenCalls: 0, frames, sockets, events: [] };
  const getToken = opts.getToken || (async () => login(u));
  const c = new Centrifuge(opts.wsUrl || ENV.wsUrl, {
    websocket: WS,
    getToken: async (ctx) => { state.tokenCalls++; return getToken(ctx); },
    ...(opts.token ? { token: opts.token } : {}),
    minReconnectDelay: opts.minReconnectDelay ?? 200,
    maxReconnectDelay: opts.maxReconnectDelay ?? 2000,
    timeout: 10000,
    ...(opts.maxServerPingDelay !== undefined ? { maxServerPingDelay: opts.maxServerPingDelay } : {}),
  });
  for (const ev of ['connecting', 'connected', 'disconnected', 'error']) {
    c.on(ev, (ctx) => state.events.push({ ev, ctx, at: Date.now() }));
  }
  state.c = c;
  opened.add(c);
  return state;
}

export async function connect(cl) {
  const p = once(cl.c, 'connected', 10000, () => dumpFrames(cl.frames));
  cl.c.connect();
  const ctx = await p;
  cl.clientId = ctx.client;
  return ctx;
}

/**
 * A subscription on room's channel with getToken from the REST endpoint (unless overridden).
 * Records publications, join/leave, subscribed/unsubscribed/error contexts.
 */
export function newSub(cl, u, room, opts = {}) {
  const rec = { pubs: [], joins: [], leaves: [], subscribed: [], unsubscribed: [], errors: [], tokenCalls: 0 };
  const getToken = opts.getToken || (async () => subscriptionToken(u, room));
  const subOpts = { ...opts };
  delete subOpts.getToken;
  if (opts.getToken !== null) {
    subOpts.getToken = async (ctx) => { rec.tokenCalls++; return getToken(ctx); };
  } else {
    delete subOpts.getToken;
  }
  const sub = cl.c.newSubscription(room.channel, subOpts);
  sub.on('publication', (ctx) => rec.pubs.push(ctx));
  sub.on('join', (ctx) => rec.joins.push(ctx));
  sub.on('leave', (ctx) => rec.leaves.push(ctx));
  sub.on('subscribed', (ctx) => rec.subscribed.push(ctx));
  sub.on('unsubscribed', (ctx) => rec.unsubscribed.push(ctx));
  sub.on('error', (ctx) => rec.errors.push(ctx));
  rec.sub = sub;
  return rec;
}

export async function subscribe(cl, rec) {
  const n = rec.subscribed.length;
  rec.sub.subscribe();
  await waitFor(() => rec.subscribed.length > n, 10000, () =>
    `subscribe on ${rec.sub.channel} did not complete; errors=${JSON.stringify(rec.errors)} unsubscribed=${JSON.stringify(rec.unsubscribed)}\n${dumpFrames(cl.frames)}`);
  return rec.subscribed[rec.subscribed.length - 1];
}

export function closeAll() {
  for (const c of opened) {
    try { c.disconnect(); } catch { /* already gone */ }
  }
  opened.clear();
}

// ---------------------------------------------------------------- waiting

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(pred, timeoutMs = 10000, describe = () => '') {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (pred()) return;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for condition\n${describe()}`);
    }
    await sleep(20);
  }
}

export function once(emitter, event, timeoutMs = 10000, describe = () => '') {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      emitter.off(event, on);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for '${event}'\n${describe()}`));
    }, timeoutMs);
    const on = (ctx) => { clearTimeout(t); resolve(ctx); };
    emitter.once(event, on);
  });
}

/** Chat publications only (membership events are publications too). */
export const chat = (pubs) => pubs.filter((p) => p.data && typeof p.data.text === 'string' && p.data.type === undefined);

export function assertStrictlyIncreasing(offsets, what) {
  for (let i = 1; i < offsets.length; i++) {
    assert.ok(offsets[i] > offsets[i - 1], `${what}: offsets not strictly increasing at ${i}: ${JSON.stringify(offsets)}`);
  }
}
