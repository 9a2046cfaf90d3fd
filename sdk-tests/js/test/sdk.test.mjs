// centrifuge-js v5 (unmodified, from npm) against a running Confab stack.
// Sequence: connect → subscribe with getToken → publish/receive → disconnect while
// others publish → reconnect and recover → token expiry and refresh; plus presence,
// history, invalid publish, subscribe without a valid token (103) and membership events.

import { test, after } from 'node:test';
import { spawn } from 'node:child_process';
import net from 'node:net';
import assert from 'node:assert/strict';
import {
  api, registerUser, createRoom, joinRoom, subscriptionToken, mintAccess, mintSub, forgedSecret,
  newClient, connect, newSub, subscribe, closeAll, waitFor, sleep, chat, assertStrictlyIncreasing,
  replyTo, allReplies, dumpFrames,
} from '../support/lib.mjs';

after(() => closeAll());

const T = { timeout: 60000 };

/** A room with an owner and `n - 1` more members, each connected and subscribed. */
async function roomWith(n, subOpts = {}) {
  const users = [];
  for (let i = 0; i < n; i++) users.push(await registerUser(`js${i}`));
  const room = await createRoom(users[0]);
  for (const u of users.slice(1)) await joinRoom(u, room);
  const members = [];
  for (const u of users) {
    const cl = newClient(u);
    await connect(cl);
    const rec = newSub(cl, u, room, { recoverable: true, ...subOpts });
    const subscribed = await subscribe(cl, rec);
    members.push({ u, cl, rec, subscribed });
  }
  return { room, members };
}

const describeAll = (members) => () => members.map((m) => `--- ${m.u.user.username}\n${dumpFrames(m.cl.frames, 25)}`).join('\n');

test('1-3. connect and subscribe with getToken; publish and receive (publisher included, exact data, same offsets)', T, async () => {
  const { room, members } = await roomWith(2);
  const [a, b] = members;
  for (const m of members) {
    assert.equal(m.cl.tokenCalls, 1, 'connection token came from getToken exactly once');
    assert.equal(m.rec.tokenCalls, 1, 'subscription token came from getToken exactly once');
    const { reply } = replyTo(m.cl.frames, 'connect');
    assert.ok(reply && reply.connect && typeof reply.connect.client === 'string' && reply.connect.client.length > 0,
      `connect reply carries a client id: ${JSON.stringify(reply)}`);
    assert.equal(m.subscribed.channel, room.channel);
    assert.equal(m.subscribed.recoverable, true, `subscribe reply says recoverable: ${JSON.stringify(replyTo(m.cl.frames, 'subscribe'))}`);
    assert.equal(typeof m.subscribed.streamPosition?.epoch, 'string');
  }

  const sent = [
    [a, { text: 'hello from a' }],
    [b, { text: 'héllo from b 🌍 "quoted" \\ back\\slash\nnewline <tag> &amp;' }],
    [a, { text: 'x'.repeat(4000) }],
    [b, { text: '   spaces   ' }],
    [a, { text: 'last one' }],
  ];
  for (const [m, data] of sent) {
    await m.rec.sub.publish(data);
  }
  for (const m of members) {
    await waitFor(() => chat(m.rec.pubs).length >= sent.length, 10000, describeAll(members));
  }
  // Let anything extra (a duplicate) arrive before comparing.
  await sleep(300);
  const offsetsBy = [];
  for (const m of members) {
    const got = chat(m.rec.pubs);
    assert.equal(got.length, sent.length, `${m.u.user.username} got exactly ${sent.length} chat publications`);
    got.forEach((p, i) => {
      assert.deepEqual(p.data, sent[i][1], `data of publication ${i} arrives exactly as sent`);
      assert.equal(p.info?.user, sent[i][0].u.user.id, `info.user of publication ${i} is the sender's user id`);
      assert.equal(p.channel, room.channel);
      assert.equal(typeof p.offset, 'number', `publication ${i} has a numeric offset: ${JSON.stringify(p)}`);
    });
    const offsets = got.map((p) => p.offset);
    assertStrictlyIncreasing(offsets, m.u.user.username);
    // Every publication, membership events included, has a position: the SDKs treat an
    // absent or 0 offset as "no position" (centrifuge-js hasOffset: Number(offset) > 0).
    for (const p of m.rec.pubs) assert.ok(p.offset > 0, `publication without a positive offset: ${JSON.stringify(p)}`);
    offsetsBy.push(offsets);
  }
  assert.deepEqual(offsetsBy[0], offsetsBy[1], 'every subscriber sees the same offsets');
  // Within a short time REST history has every publication with the same offset and data.
  const live = chat(a.rec.pubs);
  let rest = [];
  for (let i = 0; i < 100; i++) {
    const { json } = await api('GET', `/api/rooms/${room.id}/messages?limit=200`, { token: a.u.token, expect: 200 });
    rest = json.messages.filter((m) => m.kind === 'message').reverse();
    if (rest.length >= live.length) break;
    await sleep(100);
  }
  assert.deepEqual(rest.map((m) => [m.offset, m.data, m.user.id, m.room_id]),
    live.map((p, i) => [p.offset, p.data, sent[i][0].u.user.id, room.id]), 'REST history matches what the SDK delivered');

  // The room's whole stream (the owner's member_joined from room creation included) has
  // positions the SDK accepts. On a fresh topic this room's record can be the first of its
  // partition: Kafka offset 0, which centrifuge-js treats as "no offset" (hasOffset: > 0).
  const h = await a.rec.sub.history({ limit: 100 });
  for (const p of h.publications) assert.ok(p.offset > 0, `history publication without a positive offset: ${JSON.stringify(p)}`);
});

test('extra fields in data are delivered exactly as sent', T, async () => {
  const { members } = await roomWith(2);
  const data = { text: 'with extras', n: 42, f: 1.5, nested: { arr: [1, 'two', null, true], empty: {} }, uni: '日本語' };
  await members[0].rec.sub.publish(data);
  for (const m of members) await waitFor(() => chat(m.rec.pubs).length >= 1, 10000, describeAll(members));
  for (const m of members) assert.deepEqual(chat(m.rec.pubs)[0].data, data);
});

test('membership: a REST join and leave arrive as publications; a leaving user is unsubscribed', T, async () => {
  const owner = await registerUser('jsown');
  const room = await createRoom(owner);
  const oc = newClient(owner);
  await connect(oc);
  const os = newSub(oc, owner, room, { recoverable: true });
  await subscribe(oc, os);

  const joiner = await registerUser('jsjoin');
  await joinRoom(joiner, room);
  const isEvent = (type, u) => (p) => p.data && p.data.type === type && p.data.user && p.data.user.id === u.user.id;
  await waitFor(() => os.pubs.some(isEvent('member_joined', joiner)), 10000, () => JSON.stringify(os.pubs));
  const joined = os.pubs.find(isEvent('member_joined', joiner));
  assert.deepEqual(joined.data, { type: 'member_joined', user: { id: joiner.user.id, username: joiner.user.username } });
  assert.ok(joined.offset > 0, `member_joined has a positive offset: ${JSON.stringify(joined)}`);

  // The joiner subscribes, then leaves through REST: the gateway unsubscribes it.
  const jc = newClient(joiner);
  await connect(jc);
  const js = newSub(jc, joiner, room, { recoverable: true });
  await subscribe(jc, js);
  // Tokens carry iat in whole seconds: leave clearly after the token was issued.
  await sleep(2100);
  await api('POST', `/api/rooms/${room.id}/leave`, { token: joiner.token, expect: 204 });
  await waitFor(() => os.pubs.some(isEvent('member_left', joiner)), 10000, () => JSON.stringify(os.pubs));
  const left = os.pubs.find(isEvent('member_left', joiner));
  assert.deepEqual(left.data, { type: 'member_left', user: { id: joiner.user.id, username: joiner.user.username } });
  assert.ok(left.offset > joined.offset, 'member_left comes after member_joined');

  await waitFor(() => js.unsubscribed.length > 0, 10000,
    () => `the leaving user's subscription was not unsubscribed (state ${js.sub.state})\n${dumpFrames(jc.frames)}`);
  assert.equal(js.sub.state, 'unsubscribed');
  assert.equal(jc.c.state, 'connected', 'the connection itself stays up');
  // No further publications reach the user who left.
  const before = js.pubs.length;
  await os.sub.publish({ text: 'after leave' });
  await waitFor(() => chat(os.pubs).some((p) => p.data.text === 'after leave'));
  await sleep(300);
  assert.equal(js.pubs.length, before, 'a user who left receives nothing more');

  // The subscription token issued before leaving no longer admits; after a rejoin a new one does.
  const oldToken = allReplies(jc.frames, 'subscribe')[0].cmd.subscribe.token;
  jc.c.removeSubscription(js.sub);
  const stale = newSub(jc, joiner, room, { token: oldToken, getToken: null });
  stale.sub.subscribe();
  await waitFor(() => stale.unsubscribed.length > 0 || stale.subscribed.length > 0, 10000, () => dumpFrames(jc.frames));
  assert.equal(stale.subscribed.length, 0, 'a pre-departure subscription token must not subscribe');
  assert.equal(stale.unsubscribed[0].code, 103, JSON.stringify(stale.unsubscribed[0]));
  jc.c.removeSubscription(stale.sub);
  await joinRoom(joiner, room);
  const again = newSub(jc, joiner, room);
  await subscribe(jc, again);
  await os.sub.publish({ text: 'after rejoin' });
  await waitFor(() => chat(again.pubs).some((p) => p.data.text === 'after rejoin'), 10000, () => dumpFrames(jc.frames));
});

test('presence, presence_stats, and join/leave pushes', T, async () => {
  const { room, members } = await roomWith(2, { joinLeave: true });
  const [a, b] = members;
  const presence = await a.rec.sub.presence();
  const clients = Object.values(presence.clients);
  assert.equal(clients.length, 2, `presence lists both subscribed clients: ${JSON.stringify(presence)}`);
  assert.deepEqual(new Set(Object.keys(presence.clients)), new Set([a.cl.clientId, b.cl.clientId]));
  assert.deepEqual(new Set(clients.map((c) => c.user)), new Set([a.u.user.id, b.u.user.id]));
  for (const [id, info] of Object.entries(presence.clients)) assert.equal(info.client, id);

  const stats = await b.rec.sub.presenceStats();
  assert.deepEqual(stats, { numClients: 2, numUsers: 2 });

  // A third subscriber comes and goes: a sees join then leave.
  const c = await registerUser('jspres');
  await joinRoom(c, room);
  const cc = newClient(c);
  await connect(cc);
  const cs = newSub(cc, c, room, { joinLeave: true });
  await subscribe(cc, cs);
  await waitFor(() => a.rec.joins.some((j) => j.info.user === c.user.id), 10000, () => dumpFrames(a.cl.frames));
  const join = a.rec.joins.find((j) => j.info.user === c.user.id);
  assert.equal(join.info.client, cc.clientId);
  assert.equal((await a.rec.sub.presenceStats()).numClients, 3);
  cs.sub.unsubscribe();
  await waitFor(() => a.rec.leaves.some((l) => l.info.user === c.user.id), 10000, () => dumpFrames(a.cl.frames));
  let stats2;
  for (let i = 0; i < 50; i++) {
    stats2 = await a.rec.sub.presenceStats();
    if (stats2.numClients === 2) break;
    await sleep(100);
  }
  assert.deepEqual(stats2, { numClients: 2, numUsers: 2 }, 'presence drops the client that left');
});

test('history returns the published messages with their offsets and data', T, async () => {
  const { members } = await roomWith(2);
  const [a, b] = members;
  const sent = [{ text: 'h1' }, { text: 'h2' }, { text: 'h3' }];
  await a.rec.sub.publish(sent[0]);
  await b.rec.sub.publish(sent[1]);
  await a.rec.sub.publish(sent[2]);
  await waitFor(() => chat(a.rec.pubs).length >= 3, 10000, describeAll(members));
  const live = chat(a.rec.pubs);

  const h = await a.rec.sub.history({ limit: 100 });
  assert.equal(typeof h.epoch, 'string');
  assert.equal(h.epoch, a.subscribed.streamPosition.epoch, 'history epoch equals the subscribe epoch');
  const hist = chat(h.publications);
  assert.deepEqual(hist.map((p) => p.offset), live.map((p) => p.offset), `history has the same offsets: ${JSON.stringify(h)}`);
  assert.deepEqual(hist.map((p) => p.data), sent);
  assert.deepEqual(hist.map((p) => p.info?.user), [a.u.user.id, b.u.user.id, a.u.user.id]);
  assert.ok(h.offset >= live[2].offset, `history top offset ${h.offset} is at least the last publication's ${live[2].offset}`);
  for (const p of h.publications) assert.ok(p.offset > 0, `history publication without a positive offset: ${JSON.stringify(p)}`);
  assertStrictlyIncreasing(h.publications.map((p) => p.offset), 'history');

  // since: only what came after a position.
  const since = await b.rec.sub.history({ since: { offset: live[0].offset, epoch: h.epoch }, limit: 100 });
  assert.deepEqual(chat(since.publications).map((p) => p.offset), [live[1].offset, live[2].offset]);
  // reverse + limit: newest first.
  const rev = await b.rec.sub.history({ limit: 1, reverse: true });
  assert.equal(rev.publications.length, 1);
  assert.equal(rev.publications[0].offset, h.offset, 'newest publication first');
});

test('an invalid publish gets an error reply and the connection stays up', T, async () => {
  const { members } = await roomWith(1);
  const [a] = members;
  const connectedAt = Date.now();
  const bad = [
    [{ text: '' }, 'empty text'],
    [{ text: 'x'.repeat(4001) }, 'text over 4000 characters'],
    [{ text: 123 }, 'non-string text'],
    [{ nottext: 'x' }, 'missing text'],
    ['just a string', 'data that is not an object'],
  ];
  for (const [data, what] of bad) {
    await assert.rejects(a.rec.sub.publish(data), (err) => {
      assert.ok([106, 107].includes(err.code), `${what}: error code 106 or 107, got ${JSON.stringify(err)}`);
      return true;
    }, `${what} is rejected`);
  }
  assert.equal(a.cl.c.state, 'connected');
  assert.equal(a.rec.sub.state, 'subscribed');
  await a.rec.sub.publish({ text: 'still works' });
  await waitFor(() => chat(a.rec.pubs).some((p) => p.data.text === 'still works'));
  assert.equal(a.cl.sockets.length, 1, 'no reconnect happened');
  assert.deepEqual(a.cl.events.filter((e) => e.at >= connectedAt && (e.ev === 'disconnected' || e.ev === 'connecting')), []);
  assert.equal(chat(a.rec.pubs).length, 1, 'rejected publications were not delivered');
});

test('subscribing without a valid token fails with 103; the connection stays up', T, async () => {
  const a = await registerUser('js103');
  const other = await registerUser('js103o');
  const room = await createRoom(a);
  const room2 = await createRoom(a);
  const cl = newClient(a);
  await connect(cl);
  const cases = [
    ['no token at all', { getToken: null }],
    ['forged signature', { getToken: async () => mintSub(a, room.channel, 600, { secret: forgedSecret() }) }],
    ['token for another channel', { getToken: async () => subscriptionToken(a, room2) }],
    ['token for another user', { getToken: async () => mintSub(other, room.channel, 600) }],
    ['garbage token', { getToken: async () => 'not.a.jwt' }],
  ];
  for (const [what, opts] of cases) {
    const rec = newSub(cl, a, room, opts);
    rec.sub.subscribe();
    await waitFor(() => rec.unsubscribed.length > 0 || rec.subscribed.length > 0, 10000,
      () => `${what}: no outcome; errors=${JSON.stringify(rec.errors)}\n${dumpFrames(cl.frames)}`);
    assert.equal(rec.subscribed.length, 0, `${what}: must not subscribe`);
    assert.equal(rec.unsubscribed[0].code, 103, `${what}: unsubscribed with code 103, got ${JSON.stringify(rec.unsubscribed[0])}`);
    cl.c.removeSubscription(rec.sub);
  }
  assert.equal(cl.c.state, 'connected');
  assert.equal(cl.sockets.length, 1, 'no reconnect happened');
  const ok = newSub(cl, a, room);
  await subscribe(cl, ok);
});

test('4-5. a client disconnected while others publish recovers everything it missed, in order, once', T, async () => {
  const { members } = await roomWith(3);
  const [a, b, c] = members;
  await a.rec.sub.publish({ text: 'before 1' });
  await b.rec.sub.publish({ text: 'before 2' });
  for (const m of members) await waitFor(() => chat(m.rec.pubs).length >= 2, 10000, describeAll(members));

  c.cl.c.disconnect();
  await waitFor(() => c.cl.c.state === 'disconnected');
  assert.equal(c.rec.sub.state, 'subscribing', 'the subscription waits for the next connect');
  const missed = [];
  for (let i = 0; i < 6; i++) {
    const m = i % 2 ? b : a;
    const data = { text: `missed ${i}` };
    await m.rec.sub.publish(data);
    missed.push({ data, user: m.u.user.id });
  }
  await waitFor(() => chat(a.rec.pubs).length >= 8, 10000, describeAll(members));

  const subscribedBefore = c.rec.subscribed.length;
  c.cl.c.connect();
  await waitFor(() => c.rec.subscribed.length > subscribedBefore, 10000, describeAll([c]));
  const ctx = c.rec.subscribed[c.rec.subscribed.length - 1];
  const { cmd } = allReplies(c.cl.frames, 'subscribe').at(-1);
  assert.equal(cmd.subscribe.recover, true, 'the SDK asked to recover');
  assert.equal(ctx.wasRecovering, true, 'wasRecovering');
  assert.equal(ctx.recovered, true, `recovered: true; reply ${JSON.stringify(allReplies(c.cl.frames, 'subscribe').at(-1))}`);
  await waitFor(() => chat(c.rec.pubs).length >= 8, 10000, describeAll([c]));
  await a.rec.sub.publish({ text: 'after' });
  for (const m of members) await waitFor(() => chat(m.rec.pubs).length >= 9, 10000, describeAll(members));
  await sleep(300);

  const cGot = chat(c.rec.pubs);
  const aGot = chat(a.rec.pubs);
  assert.deepEqual(cGot.map((p) => p.data.text), aGot.map((p) => p.data.text), 'same publications, same order, no duplicates');
  assert.deepEqual(cGot.map((p) => p.offset), aGot.map((p) => p.offset), 'same offsets');
  assert.deepEqual(cGot.slice(2, 8).map((p) => ({ data: p.data, user: p.info?.user })), missed);
});

test('one client in three rooms: the batched resubscribe after a reconnect recovers every room', T, async () => {
  const u = await registerUser('jsmulti');
  const p = await registerUser('jsmultip');
  const rooms = [await createRoom(u), await createRoom(u), await createRoom(u)];
  for (const r of rooms) await joinRoom(p, r);
  const cl = newClient(u);
  await connect(cl);
  const recs = [];
  for (const r of rooms) { const rec = newSub(cl, u, r); await subscribe(cl, rec); recs.push(rec); }
  const pc = newClient(p);
  await connect(pc);
  const precs = [];
  for (const r of rooms) { const rec = newSub(pc, p, r); await subscribe(pc, rec); precs.push(rec); }
  for (const pr of precs) await pr.sub.publish({ text: 'before' });
  for (const rec of recs) await waitFor(() => chat(rec.pubs).length >= 1, 10000, () => dumpFrames(cl.frames));

  cl.c.disconnect();
  await waitFor(() => cl.c.state === 'disconnected');
  for (let i = 0; i < 3; i++) for (const pr of precs) await pr.sub.publish({ text: `missed ${i}` });
  const subscribedBefore = recs.map((r) => r.subscribed.length);
  const outBefore = cl.frames.length;
  cl.c.connect();
  for (const [i, rec] of recs.entries()) {
    await waitFor(() => rec.subscribed.length > subscribedBefore[i], 10000, () => dumpFrames(cl.frames));
    assert.equal(rec.subscribed.at(-1).recovered, true, `room ${i} recovered`);
  }
  for (const [i, rec] of recs.entries()) {
    await waitFor(() => chat(rec.pubs).length >= 4 && chat(precs[i].pubs).length >= 4, 10000, () => dumpFrames(cl.frames));
    assert.deepEqual(chat(rec.pubs).map((x) => x.data.text), ['before', 'missed 0', 'missed 1', 'missed 2'], `room ${i}`);
    assert.deepEqual(chat(rec.pubs).map((x) => x.offset), chat(precs[i].pubs).map((x) => x.offset), `room ${i} offsets`);
  }
  const resubscribes = cl.frames.slice(outBefore).filter((f) => f.dir === 'out' && f.msg?.subscribe);
  assert.equal(resubscribes.length, 3);
  // centrifuge-js sends the resubscribes in one frame after connect: several commands per frame work.
  console.log(`resubscribe frame batch sizes: ${resubscribes.map((f) => f.batch).join(',')}`);
});

// The gateway's recovery window per room (CONFAB_GATEWAY_HISTORY_SIZE, 1000 by default).
const WINDOW = Number(process.env.CONFAB_GATEWAY_HISTORY_SIZE || 1000);

test('recovery from outside the window says recovered: false', { timeout: 180000 }, async () => {
  const a = await registerUser('jswin');
  const b = await registerUser('jswinp');
  const room = await createRoom(a);
  await joinRoom(b, room);
  const cl = newClient(a);
  await connect(cl);
  const rec = newSub(cl, a, room);
  await subscribe(cl, rec);
  // Publishers: several connections, each under the per-connection publish rate limit.
  const nPub = Math.min(10, Math.max(1, Math.ceil((WINDOW + 5) / 40)));
  const pubs = [];
  for (let i = 0; i < nPub; i++) {
    const pc = newClient(b);
    await connect(pc);
    const pr = newSub(pc, b, room);
    await subscribe(pc, pr);
    pubs.push(pr);
  }
  await pubs[0].sub.publish({ text: 'seen' });
  await waitFor(() => chat(rec.pubs).length >= 1);

  cl.c.disconnect();
  await waitFor(() => cl.c.state === 'disconnected');
  const total = WINDOW + 5;
  let next = 0;
  await Promise.all(pubs.map(async (pr) => {
    for (;;) {
      const i = next++;
      if (i >= total) return;
      for (;;) {
        try { await pr.sub.publish({ text: `flood ${i}` }); break; } catch (e) {
          if (e.code === 111) { await sleep(100); continue; } // too many requests: slow down
          throw e;
        }
      }
      if (total > 100) await sleep(50); // ~20/s per connection
    }
  }));
  const before = rec.subscribed.length;
  cl.c.connect();
  await waitFor(() => rec.subscribed.length > before, 20000, () => dumpFrames(cl.frames, 5));
  const ctx = rec.subscribed.at(-1);
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, false, `${total} publications missed with a window of ${WINDOW}: recovered must be false`);
  await pubs[0].sub.publish({ text: 'live again' });
  await waitFor(() => chat(rec.pubs).some((p) => p.data.text === 'live again'), 10000);
});

test('an abruptly lost transport reconnects and recovers what was published meanwhile', T, async () => {
  const { members } = await roomWith(2);
  const [a, b] = members;
  await a.rec.sub.publish({ text: 'first' });
  await waitFor(() => chat(b.rec.pubs).length >= 1, 10000, describeAll(members));
  // Kill b's TCP connection without a close handshake, then publish at once.
  b.cl.sockets.at(-1).terminate();
  for (let i = 0; i < 5; i++) await a.rec.sub.publish({ text: `during ${i}` });
  await waitFor(() => b.rec.subscribed.length >= 2, 15000, describeAll([b]));
  await a.rec.sub.publish({ text: 'after' });
  await waitFor(() => chat(b.rec.pubs).length >= 7 && chat(a.rec.pubs).length >= 7, 10000, describeAll([a, b]));
  await sleep(300);
  assert.deepEqual(chat(b.rec.pubs).map((p) => p.data.text), chat(a.rec.pubs).map((p) => p.data.text));
  assert.deepEqual(chat(b.rec.pubs).map((p) => p.offset), chat(a.rec.pubs).map((p) => p.offset));
  const ctx = b.rec.subscribed.at(-1);
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, true);
});

test('repeated transport loss under continuous publishing: no gaps, no duplicates, same order', T, async () => {
  const { members } = await roomWith(2);
  const [a, b] = members;
  let stop = false;
  let n = 0;
  const publisher = (async () => {
    while (!stop) {
      await a.rec.sub.publish({ text: `c${n++}` });
      await sleep(60); // under the per-connection publish rate limit
    }
  })();
  for (let cycle = 0; cycle < 4; cycle++) {
    await sleep(400);
    const before = b.rec.subscribed.length;
    b.cl.sockets.at(-1).terminate();
    await waitFor(() => b.rec.subscribed.length > before, 15000, describeAll([b]));
    const ctx = b.rec.subscribed.at(-1);
    assert.equal(ctx.recovered, true, `cycle ${cycle}: recovered`);
  }
  await sleep(300);
  stop = true;
  await publisher;
  await waitFor(() => chat(b.rec.pubs).length >= n && chat(a.rec.pubs).length >= n, 10000, describeAll(members));
  await sleep(300);
  const want = Array.from({ length: n }, (_, i) => `c${i}`);
  assert.deepEqual(chat(a.rec.pubs).map((p) => p.data.text), want, 'the publisher saw every publication in order');
  assert.deepEqual(chat(b.rec.pubs).map((p) => p.data.text), want, 'the reconnecting subscriber saw every publication once, in order');
  assert.deepEqual(chat(b.rec.pubs).map((p) => p.offset), chat(a.rec.pubs).map((p) => p.offset));
});

test('since: a new subscription from a known position receives what came after it', T, async () => {
  const { room, members } = await roomWith(2);
  const [a, b] = members;
  for (let i = 0; i < 4; i++) await a.rec.sub.publish({ text: `s${i}` });
  await waitFor(() => chat(a.rec.pubs).length >= 4, 10000, describeAll(members));
  const live = chat(a.rec.pubs);
  const epoch = a.subscribed.streamPosition.epoch;
  // A second connection of b subscribes with since = offset of s1.
  const cl2 = newClient(b.u);
  await connect(cl2);
  const rec = newSub(cl2, b.u, room, { since: { offset: live[1].offset, epoch } });
  const ctx = await subscribe(cl2, rec);
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, true, JSON.stringify(allReplies(cl2.frames, 'subscribe')));
  await waitFor(() => chat(rec.pubs).length >= 2, 10000, () => dumpFrames(cl2.frames));
  await sleep(200);
  assert.deepEqual(chat(rec.pubs).map((p) => p.offset), [live[2].offset, live[3].offset]);
});

test('6a. connection token expiry: the SDK calls getToken again, refreshes, and keeps working', T, async () => {
  const { room, members } = await roomWith(1);
  const u = members[0].u;
  const cl = newClient(u, { getToken: async () => mintAccess(u, 3) });
  await connect(cl);
  const { reply } = replyTo(cl.frames, 'connect');
  assert.equal(reply.connect.expires, true, `connect reply says expires: ${JSON.stringify(reply)}`);
  assert.ok(reply.connect.ttl > 0 && reply.connect.ttl <= 3, `connect ttl in (0, 3]: ${reply.connect.ttl}`);
  const rec = newSub(cl, u, room);
  await subscribe(cl, rec);
  await sleep(8000);
  const refreshes = allReplies(cl.frames, 'refresh');
  assert.ok(refreshes.length >= 2, `at least two refresh commands in 8 s, got ${refreshes.length}\n${dumpFrames(cl.frames)}`);
  for (const r of refreshes) {
    assert.ok(r.reply && r.reply.refresh && !r.reply.error, `refresh succeeded: ${JSON.stringify(r)}`);
    assert.equal(r.reply.refresh.expires, true);
    assert.ok(r.reply.refresh.ttl > 0);
  }
  assert.ok(cl.tokenCalls >= 3, `getToken called for connect and each refresh (${cl.tokenCalls})`);
  assert.equal(cl.sockets.length, 1, 'no reconnect was needed');
  assert.equal(cl.c.state, 'connected');
  await rec.sub.publish({ text: 'after refresh' });
  await waitFor(() => chat(rec.pubs).length >= 1);
});

test('6b. an expired connection token gets 109; the SDK gets a new one through getToken and connects', T, async () => {
  const u = await registerUser('jsexp');
  const cl = newClient(u, { token: mintAccess(u, -60) });
  await connect(cl);
  const first = replyTo(cl.frames, 'connect');
  assert.equal(first.reply?.error?.code, 109, `first connect gets error 109: ${JSON.stringify(first.reply)}`);
  assert.equal(cl.tokenCalls, 1);
  assert.equal(cl.c.state, 'connected');
});

test('an invalid connection token is refused', T, async () => {
  const u = await registerUser('jsinv');
  const cl = newClient(u, { token: mintAccess(u, 600, forgedSecret()), getToken: async () => mintAccess(u, 600, forgedSecret()) });
  cl.c.connect();
  await waitFor(() => cl.c.state === 'disconnected' || cl.frames.some((f) => f.dir === 'close'), 10000, () => dumpFrames(cl.frames));
  assert.ok(!cl.events.some((e) => e.ev === 'connected'), 'never connected');
  cl.c.disconnect();
});

test('6c. subscription token expiry: the SDK calls getToken again, sub_refresh succeeds, delivery continues', T, async () => {
  const { room, members } = await roomWith(2);
  const [a, b] = members;
  const cl = newClient(b.u);
  await connect(cl);
  // b's second connection subscribes with 3-second subscription tokens.
  const rec = newSub(cl, b.u, room, { getToken: async () => mintSub(b.u, room.channel, 3) });
  await subscribe(cl, rec);
  const sr = allReplies(cl.frames, 'subscribe').at(-1);
  assert.equal(sr.reply.subscribe.expires, true, `subscribe reply says expires: ${JSON.stringify(sr.reply)}`);
  assert.ok(sr.reply.subscribe.ttl > 0 && sr.reply.subscribe.ttl <= 3, `ttl in (0, 3]: ${sr.reply.subscribe.ttl}`);
  await sleep(8000);
  const refreshes = allReplies(cl.frames, 'sub_refresh');
  assert.ok(refreshes.length >= 2, `at least two sub_refresh in 8 s, got ${refreshes.length}\n${dumpFrames(cl.frames)}`);
  for (const r of refreshes) {
    assert.equal(r.cmd.sub_refresh.channel, room.channel);
    assert.ok(r.reply && r.reply.sub_refresh && !r.reply.error, `sub_refresh succeeded: ${JSON.stringify(r)}`);
    assert.equal(r.reply.sub_refresh.expires, true);
  }
  assert.ok(rec.tokenCalls >= 3);
  assert.equal(rec.sub.state, 'subscribed');
  assert.equal(rec.subscribed.length, 1, 'no resubscribe was needed');
  await a.rec.sub.publish({ text: 'after sub refresh' });
  await waitFor(() => chat(rec.pubs).some((p) => p.data.text === 'after sub refresh'), 10000, () => dumpFrames(cl.frames));
});

test('6d. an expired subscription token gets 109; the SDK gets a new one and subscribes', T, async () => {
  const u = await registerUser('jssexp');
  const room = await createRoom(u);
  const cl = newClient(u);
  await connect(cl);
  const rec = newSub(cl, u, room, { token: mintSub(u, room.channel, -60) });
  await subscribe(cl, rec);
  const first = allReplies(cl.frames, 'subscribe')[0];
  assert.equal(first.reply?.error?.code, 109, `first subscribe gets 109: ${JSON.stringify(first.reply)}`);
  assert.equal(rec.tokenCalls, 1);
});

// The gateway's grace after a token's exp before it closes an unrefreshed connection or
// subscription (CONFAB_GATEWAY_EXPIRED_CLOSE_DELAY_SECS, 25 by default, as in Centrifugo).
const EXPIRED_CLOSE_DELAY = Number(process.env.CONFAB_GATEWAY_EXPIRED_CLOSE_DELAY_SECS || 25);

test('6e. server pings keep an idle connection up; unrefreshed tokens are enforced', { timeout: (EXPIRED_CLOSE_DELAY + 60) * 1000 }, async () => {
  const u = await registerUser('jsidle');
  const room = await createRoom(u);
  const hang = () => new Promise(() => {});

  // 1. An idle client with a long-lived token, strict about missing pings.
  const idle = newClient(u, { maxServerPingDelay: 3000 });
  await connect(idle);
  const ping = replyTo(idle.frames, 'connect').reply.connect.ping;
  assert.ok(ping > 0, 'connect reply announces a ping interval');

  // 2. A connection whose 2-second token is never refreshed (getToken hangs after the first call).
  let calls = 0;
  const stale = newClient(u, { getToken: async () => (++calls === 1 ? mintAccess(u, 2) : hang()) });
  await connect(stale);

  // 3. A subscription whose 2-second token is never refreshed.
  const subConn = newClient(u);
  await connect(subConn);
  let subCalls = 0;
  const staleSub = newSub(subConn, u, room, { getToken: async () => (++subCalls === 1 ? mintSub(u, room.channel, 2) : hang()) });
  await subscribe(subConn, staleSub);

  const serverEnded = (cl) => cl.frames.some((f) => (f.dir === 'close') || (f.dir === 'in' && f.msg?.push?.disconnect));
  const subEnded = () => subConn.frames.some((f) => f.dir === 'in' && f.msg?.push?.unsubscribe && f.msg.push.channel === room.channel) || serverEnded(subConn);
  const deadline = Math.max(ping + 5, 2 + EXPIRED_CLOSE_DELAY + 8) * 1000;
  await waitFor(() => serverEnded(stale) && subEnded(), deadline,
    () => `stale connection ended: ${serverEnded(stale)}, stale subscription ended: ${subEnded()}\n--- stale\n${dumpFrames(stale.frames, 10)}\n--- sub\n${dumpFrames(subConn.frames, 10)}`);
  const pingsLeft = ping * 1000 + 4000 - (Date.now() - idle.events.find((e) => e.ev === 'connected').at);
  if (pingsLeft > 0) await sleep(pingsLeft);

  const pings = idle.frames.filter((f) => f.dir === 'in' && f.msg && Object.keys(f.msg).length === 0);
  assert.ok(pings.length >= 1, `at least one server ping in ${ping + 4} s:\n${dumpFrames(idle.frames, 10)}`);
  if (replyTo(idle.frames, 'connect').reply.connect.pong) {
    const pongs = idle.frames.filter((f) => f.dir === 'out' && f.msg && Object.keys(f.msg).length === 0);
    assert.ok(pongs.length >= 1, 'the SDK answered the ping');
  }
  assert.equal(idle.sockets.length, 1, `the idle client never reconnected:\n${dumpFrames(idle.frames, 10)}`);
  assert.equal(idle.c.state, 'connected');
  const staleEnd = stale.frames.find((f) => f.dir === 'close' || f.msg?.push?.disconnect);
  assert.ok(staleEnd.at - stale.events.find((e) => e.ev === 'connected').at >= 2000, 'not closed before the token expired');
});

// A second gateway process behind the same broker: CONFAB_WS_URL_2, or one of our own
// started from CONFAB_GATEWAY_BIN (with KAFKA_BROKERS and the other settings in the
// environment, as `sdk-tests/run` exports them from .dev/env).
const WS2 = process.env.CONFAB_WS_URL_2;
const GATEWAY_BIN = process.env.CONFAB_GATEWAY_BIN;

const freePort = () => new Promise((resolve) => {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
});

/** Starts our own gateway on a free port; {url, start(), stop()} (start again after stop). */
async function ownGateway() {
  const port = await freePort();
  const children = [];
  const g = {
    url: `ws://127.0.0.1:${port}/connection/websocket`,
    async start() {
      const child = spawn(GATEWAY_BIN, [], { env: { ...process.env, CONFAB_GATEWAY_ADDR: `127.0.0.1:${port}` }, stdio: 'ignore' });
      children.push(child);
      g.child = child;
      for (let i = 0; i < 150; i++) {
        try { if ((await fetch(`http://127.0.0.1:${port}/healthz`)).ok) return; } catch { /* not yet */ }
        await sleep(100);
      }
      throw new Error('own gateway did not become healthy');
    },
    stopAll() { for (const c of children) c.kill('SIGTERM'); },
  };
  await g.start();
  return g;
}

test('two gateways: same offsets and epoch; a position from one recovers on the other', { ...T, skip: WS2 || GATEWAY_BIN ? false : 'neither CONFAB_WS_URL_2 nor CONFAB_GATEWAY_BIN set' }, async (t) => {
  let ws2 = WS2;
  if (!ws2) {
    const g = await ownGateway();
    t.after(() => g.stopAll());
    ws2 = g.url;
  }
  const a = await registerUser('js2gwa');
  const b = await registerUser('js2gwb');
  const room = await createRoom(a);
  await joinRoom(b, room);
  const c1 = newClient(a);
  await connect(c1);
  const s1 = newSub(c1, a, room);
  const x1 = await subscribe(c1, s1);
  const c2 = newClient(b, { wsUrl: ws2 });
  await connect(c2);
  const s2 = newSub(c2, b, room);
  const x2 = await subscribe(c2, s2);
  assert.equal(x1.streamPosition.epoch, x2.streamPosition.epoch, 'same epoch on both gateways');
  for (let i = 0; i < 4; i++) await (i % 2 ? s2 : s1).sub.publish({ text: `g${i}` });
  for (const r of [s1, s2]) await waitFor(() => chat(r.pubs).length >= 4, 10000, () => dumpFrames(c1.frames) + '\n' + dumpFrames(c2.frames));
  assert.deepEqual(chat(s1.pubs).map((p) => [p.offset, p.data.text, p.info.user]), chat(s2.pubs).map((p) => [p.offset, p.data.text, p.info.user]),
    'both gateways give the same offsets (if not: is the stack\'s gateway the same build as CONFAB_GATEWAY_BIN?)');
  // A client that saw g0 on gateway 1 continues on gateway 2 from that position.
  const g0 = chat(s1.pubs)[0];
  const c3 = newClient(a, { wsUrl: ws2 });
  await connect(c3);
  const s3 = newSub(c3, a, room, { since: { offset: g0.offset, epoch: x1.streamPosition.epoch } });
  const x3 = await subscribe(c3, s3);
  assert.equal(x3.recovered, true);
  await waitFor(() => chat(s3.pubs).length >= 3, 10000, () => dumpFrames(c3.frames));
  assert.deepEqual(chat(s3.pubs).map((p) => p.offset), chat(s1.pubs).slice(1).map((p) => p.offset));
  // Presence: what each gateway reports for the room (documented per instance or cluster-wide).
  const p1 = await s1.sub.presenceStats();
  const p2 = await s2.sub.presenceStats();
  console.log(`presence_stats on gateway 1: ${JSON.stringify(p1)}, on gateway 2: ${JSON.stringify(p2)} (3 clients subscribed across both)`);
});

test('gateway SIGTERM: the SDK is told to reconnect, and recovers on the restarted gateway', { ...T, skip: GATEWAY_BIN ? false : 'CONFAB_GATEWAY_BIN not set' }, async () => {
  const g = await ownGateway();
  const url = g.url;
  try {
    let gw = g.child;
    const a = await registerUser('jsterm');
    const b = await registerUser('jstermp');
    const room = await createRoom(a);
    await joinRoom(b, room);
    const cl = newClient(a, { wsUrl: url });
    await connect(cl);
    const rec = newSub(cl, a, room);
    await subscribe(cl, rec);
    const pc = newClient(b); // on the stack's gateway
    await connect(pc);
    const prec = newSub(pc, b, room);
    await subscribe(pc, prec);
    await prec.sub.publish({ text: 'one' });
    await waitFor(() => chat(rec.pubs).length >= 1);

    const n0 = cl.events.length;
    gw.kill('SIGTERM');
    await waitFor(() => cl.frames.some((f) => f.dir === 'close') && cl.events.length > n0, 15000, () => dumpFrames(cl.frames, 5));
    const close = cl.frames.find((f) => f.dir === 'close');
    const ev = cl.events.slice(n0).find((e) => e.ev === 'connecting' || e.ev === 'disconnected');
    assert.equal(ev.ev, 'connecting', `the SDK reconnects after a shutdown close (code ${close.code} "${close.reason}")`);
    for (let i = 0; i < 3; i++) await prec.sub.publish({ text: `while down ${i}` });
    await g.start();
    await waitFor(() => rec.subscribed.length >= 2, 20000, () => dumpFrames(cl.frames, 6));
    assert.equal(rec.subscribed.at(-1).recovered, true);
    await waitFor(() => chat(rec.pubs).length >= 4, 10000);
    assert.deepEqual(chat(rec.pubs).map((x) => x.data.text), ['one', 'while down 0', 'while down 1', 'while down 2']);
  } finally {
    g.stopAll();
  }
});

test('publications carry tags.message_id; edits, reactions and deletes arrive as publications in order', T, async () => {
  const { room, members } = await roomWith(2);
  const [a, b] = members;
  await a.rec.sub.publish({ text: 'first' });
  for (const m of members) await waitFor(() => chat(m.rec.pubs).length >= 1, 10000, describeAll(members));
  const first = chat(b.rec.pubs)[0];
  const id = first.tags?.message_id;
  assert.match(id ?? '', /^[0-9a-f-]{36}$/, `tags.message_id: ${JSON.stringify(first)}`);
  await a.rec.sub.publish({ text: 'an answer', reply_to: id });
  for (const m of members) await waitFor(() => chat(m.rec.pubs).length >= 2, 10000, describeAll(members));
  assert.equal(chat(b.rec.pubs)[1].data.reply_to, id);
  // The id is the REST Message.id, once the persister stored it.
  let stored = null;
  for (let i = 0; i < 100 && !stored; i++) {
    const { json } = await api('GET', `/api/rooms/${room.id}/messages`, { token: a.u.token, expect: 200 });
    stored = json.messages.find((m) => m.id === id) ?? null;
    if (!stored) await sleep(100);
  }
  assert.ok(stored, 'the message is in history under its tags.message_id');
  assert.equal(stored.offset, first.offset);

  const base = `/api/rooms/${room.id}/messages/${id}`;
  const edited = (await api('PATCH', base, { body: { text: 'first!' }, token: a.u.token, expect: 200 })).json;
  await api('PUT', `${base}/reactions/${encodeURIComponent('🎉')}`, { token: b.u.token, expect: 204 });
  await api('DELETE', base, { token: a.u.token, expect: 204 });
  const kinds = ['message_edited', 'reaction_added', 'message_deleted'];
  const changes = (m) => m.rec.pubs.filter((p) => kinds.includes(p.data?.type));
  for (const m of members) await waitFor(() => changes(m).length >= 3, 10000, describeAll(members));
  for (const m of members) {
    const got = changes(m);
    assert.deepEqual(got.map((p) => p.data), [
      { type: 'message_edited', message_id: id, text: 'first!', edited_at: edited.edited_at },
      { type: 'reaction_added', message_id: id, emoji: '🎉', user: b.u.user },
      { type: 'message_deleted', message_id: id },
    ]);
    assertStrictlyIncreasing(m.rec.pubs.map((p) => p.offset), m.u.user.username);
  }
});
