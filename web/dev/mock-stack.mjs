// A small in-memory stand-in for the Confab stack, for working on the web client
// without PostgreSQL, the broker and the Rust services. NOT used by the tests,
// which always run against the real stack (ops/dev up -d).
//
//   npm --prefix web run build && node web/dev/mock-stack.mjs
//   → http://127.0.0.1:28180 (REST + web/dist), ws://127.0.0.1:28100/connection/websocket
//   then: CONFAB_API_URL=http://127.0.0.1:28180 CONFAB_WS_URL=ws://127.0.0.1:28100/connection/websocket npm --prefix web test
//
// It implements the subset of CONTRACT.md §3 and of the Centrifugo JSON protocol
// that the client uses (connect, subscribe with recovery, publish, presence,
// join/leave pushes). Tokens are opaque random strings.

import { createServer } from 'node:http';
import { randomUUID, randomBytes } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocketServer } from 'ws';

const dist = fileURLToPath(new URL('../dist/', import.meta.url));
const API_PORT = Number(process.env.MOCK_API_PORT || 28180);
const WS_PORT = Number(process.env.MOCK_WS_PORT || 28100);
const WINDOW = 100; // recovery window per room

const users = new Map(); // id -> {id, username, password}
const tokens = new Map(); // token -> user id
const subTokens = new Map(); // token -> {user, channel}
const rooms = new Map(); // id -> room
let offsetCounter = 0; // rooms "share a partition": offsets have gaps per room

function err(res, status, code, message) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ error: { code, message } }));
}
function ok(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(body === undefined ? '' : JSON.stringify(body));
}
function publicUser(u) {
  return { id: u.id, username: u.username };
}
function roomView(r, uid) {
  return {
    id: r.id, name: r.name, visibility: r.visibility, requires_password: !!r.password, owner_id: r.owner,
    created_at: r.created_at, channel: `room:${r.id}`, member_count: r.members.size, is_member: r.members.has(uid),
  };
}
function visible(r, uid) {
  return r.visibility === 'public' || r.members.has(uid) || r.invites.has(uid);
}
function session(u) {
  const token = randomBytes(24).toString('hex');
  tokens.set(token, u.id);
  return { user: publicUser(u), token, expires_at: new Date(Date.now() + 86400e3).toISOString() };
}

/** Appends an event to the room stream and fans it out. */
function append(room, kind, user, data, info) {
  offsetCounter += 1 + Math.floor(Math.random() * 3);
  const rec = { id: randomUUID(), offset: offsetCounter, kind, user: publicUser(user), data, created_at: new Date().toISOString(), info };
  room.stream.push(rec);
  const pub = { data, offset: rec.offset };
  if (info) pub.info = info;
  for (const c of clients) if (c.subs.has(`room:${room.id}`)) c.push({ channel: `room:${room.id}`, pub });
  return rec;
}

async function body(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : {};
}

const api = createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x');
  const p = url.pathname;
  try {
    if (!p.startsWith('/api/')) return serveStatic(p, res);
    if (req.method === 'POST' && p === '/api/auth/register') {
      const { username, password } = await body(req);
      if (!/^[A-Za-z0-9_.-]{3,32}$/.test(username || '') || (password || '').length < 8) return err(res, 422, 'invalid', 'bad username or password');
      if ([...users.values()].some((u) => u.username.toLowerCase() === username.toLowerCase())) return err(res, 409, 'username_taken', 'taken');
      const u = { id: randomUUID(), username, password };
      users.set(u.id, u);
      return ok(res, 201, session(u));
    }
    if (req.method === 'POST' && p === '/api/auth/login') {
      const { username, password } = await body(req);
      const u = [...users.values()].find((x) => x.username === username && x.password === password);
      if (!u) return err(res, 401, 'invalid_credentials', 'invalid credentials');
      return ok(res, 200, session(u));
    }
    const auth = /^Bearer (.+)$/.exec(req.headers.authorization || '');
    const uid = auth && tokens.get(auth[1]);
    if (!uid) return err(res, 401, 'unauthorized', 'missing or invalid token');
    const me = users.get(uid);
    if (p === '/api/me') return ok(res, 200, publicUser(me));
    if (p === '/api/rooms' && req.method === 'GET') {
      // Pages in creation order: ?limit= (default 50, cap 200) and ?after=<room id>.
      const limit = Math.min(Number(url.searchParams.get('limit') || 50), 200);
      const after = url.searchParams.get('after');
      const all = [...rooms.values()].filter((r) => visible(r, uid));
      const start = after ? all.findIndex((r) => r.id === after) + 1 : 0;
      const page = all.slice(start, start + limit);
      const next_after = start + limit < all.length ? page[page.length - 1].id : null;
      return ok(res, 200, { rooms: page.map((r) => roomView(r, uid)), next_after });
    }
    if (p === '/api/rooms' && req.method === 'POST') {
      const { name, visibility, password } = await body(req);
      const r = { id: randomUUID(), name, visibility, password: password || null, owner: uid, created_at: new Date().toISOString(), members: new Set([uid]), invites: new Set(), stream: [] };
      rooms.set(r.id, r);
      append(r, 'member_joined', me, { type: 'member_joined', user: publicUser(me) });
      return ok(res, 201, roomView(r, uid));
    }
    const m = /^\/api\/rooms\/([^/]+)(?:\/([a-z-]+))?$/.exec(p);
    const r = m && rooms.get(m[1]);
    if (!r || !(visible(r, uid) || m[2] === 'join')) return err(res, 404, 'not_found', 'no such room');
    const action = m[2];
    if (!action) return ok(res, 200, roomView(r, uid));
    if (action === 'join') {
      const { password } = await body(req);
      if (!r.members.has(uid)) {
        if (r.visibility === 'private') {
          if (r.password ? password !== r.password : !r.invites.has(uid)) {
            return err(res, 403, r.password ? 'wrong_password' : 'invite_required', r.password ? 'wrong password' : 'invite required');
          }
        }
        r.members.add(uid);
        append(r, 'member_joined', me, { type: 'member_joined', user: publicUser(me) });
      }
      return ok(res, 200, roomView(r, uid));
    }
    if (action === 'leave') {
      if (r.members.delete(uid)) append(r, 'member_left', me, { type: 'member_left', user: publicUser(me) });
      for (const c of clients) if (c.user === uid) c.serverUnsubscribe(`room:${r.id}`);
      return ok(res, 204);
    }
    if (!r.members.has(uid)) return err(res, 403, 'not_a_member', 'not a member');
    if (action === 'invites') {
      const { username } = await body(req);
      const u = [...users.values()].find((x) => x.username === username);
      if (!u) return err(res, 404, 'user_not_found', 'no such user');
      r.invites.add(u.id);
      return ok(res, 201, {});
    }
    if (action === 'members') return ok(res, 200, { members: [...r.members].map((id) => ({ user: publicUser(users.get(id)), role: id === r.owner ? 'owner' : 'member', joined_at: r.created_at })) });
    if (action === 'messages') {
      const limit = Math.min(Number(url.searchParams.get('limit') || 50), 200);
      const before = url.searchParams.get('before');
      const older = r.stream.filter((x) => before === null || x.offset < Number(before)).reverse();
      const page = older.slice(0, limit);
      const messages = page.map(({ info: _i, ...x }) => ({ ...x, room_id: r.id }));
      return ok(res, 200, { messages, next_before: older.length > limit ? page[page.length - 1].offset : null });
    }
    if (action === 'subscription-token') {
      const token = randomBytes(24).toString('hex');
      subTokens.set(token, { user: uid, channel: `room:${r.id}` });
      return ok(res, 200, { token });
    }
    return err(res, 404, 'not_found', 'no route');
  } catch (e) {
    return err(res, 400, 'bad_request', String(e));
  }
});

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.map': 'application/json', '.txt': 'text/plain' };
async function serveStatic(p, res) {
  let file = normalize(join(dist, decodeURIComponent(p)));
  if (!file.startsWith(dist)) file = join(dist, 'index.html');
  try {
    if (!(await stat(file)).isFile()) file = join(dist, 'index.html');
  } catch {
    file = join(dist, 'index.html');
  }
  res.writeHead(200, { 'content-type': TYPES[extname(file)] || 'application/octet-stream' });
  res.end(await readFile(file));
}

// ---- Centrifugo JSON protocol subset ----
const clients = new Set();
const wss = new WebSocketServer({ host: '127.0.0.1', port: WS_PORT, path: '/connection/websocket' });
wss.on('connection', (ws) => {
  const c = {
    id: randomUUID(), user: null, subs: new Set(),
    send(obj) { if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(obj)); },
    push(push) { this.send({ push }); },
    info() { return { user: this.user, client: this.id }; },
    serverUnsubscribe(ch) {
      if (!this.subs.delete(ch)) return;
      this.push({ channel: ch, unsubscribe: { code: 2000, reason: 'server unsubscribe' } });
      leave(ch, this);
    },
  };
  clients.add(c);
  ws.on('close', () => {
    clients.delete(c);
    for (const ch of c.subs) leave(ch, c);
  });
  ws.on('message', (raw) => {
    for (const line of raw.toString('utf8').split('\n').filter(Boolean)) {
      let cmd;
      try { cmd = JSON.parse(line); } catch { ws.close(3003, 'bad request'); return; }
      handle(c, cmd);
    }
  });
});
function leave(ch, c) {
  for (const o of clients) if (o.subs.has(ch)) o.push({ channel: ch, leave: { info: c.info() } });
}
function handle(c, cmd) {
  const reply = (k, v) => c.send({ id: cmd.id, [k]: v });
  const error = (code, message) => c.send({ id: cmd.id, error: { code, message } });
  if (cmd.connect) {
    const uid = tokens.get(cmd.connect.token);
    if (!uid) return error(109, 'token expired'); // good enough for a mock
    c.user = uid;
    return reply('connect', { client: c.id, version: 'mock' });
  }
  if (!c.user) return error(101, 'unauthorized');
  if (cmd.subscribe) {
    const s = cmd.subscribe;
    const t = subTokens.get(s.token);
    if (!t || t.user !== c.user || t.channel !== s.channel) return error(103, 'permission denied');
    const room = rooms.get(s.channel.slice(5));
    const stream = room.stream;
    const top = stream.length ? stream[stream.length - 1].offset : 0;
    const res = { recoverable: true, positioned: true, epoch: 'mock', offset: top };
    if (s.recover) {
      res.was_recovering = true;
      const since = s.offset || 0;
      const missed = stream.filter((x) => x.offset > since);
      const windowStart = stream.length > WINDOW ? stream[stream.length - WINDOW].offset : 0;
      if (since + 1 >= windowStart || since >= top) {
        res.recovered = true;
        res.publications = missed.map((x) => ({ data: x.data, offset: x.offset, ...(x.info ? { info: x.info } : {}) }));
      } else res.recovered = false;
    }
    for (const o of clients) if (o.subs.has(s.channel)) o.push({ channel: s.channel, join: { info: c.info() } });
    c.subs.add(s.channel);
    return reply('subscribe', res);
  }
  if (cmd.unsubscribe) {
    if (c.subs.delete(cmd.unsubscribe.channel)) leave(cmd.unsubscribe.channel, c);
    return reply('unsubscribe', {});
  }
  if (cmd.publish) {
    const { channel, data } = cmd.publish;
    if (!c.subs.has(channel)) return error(103, 'permission denied');
    if (!data || typeof data.text !== 'string' || !data.text) return error(107, 'bad request');
    const room = rooms.get(channel.slice(5));
    setTimeout(() => {
      append(room, 'message', users.get(c.user), data, c.info());
      reply('publish', {});
    }, 5);
    return;
  }
  if (cmd.presence) {
    const presence = {};
    for (const o of clients) if (o.subs.has(cmd.presence.channel)) presence[o.id] = o.info();
    return reply('presence', { presence });
  }
  if (cmd.presence_stats) return reply('presence_stats', { num_clients: 0, num_users: 0 });
  return error(108, 'not available');
}

api.listen(API_PORT, '127.0.0.1', () => console.log(`mock stack: http://127.0.0.1:${API_PORT}  ws://127.0.0.1:${WS_PORT}/connection/websocket`));
