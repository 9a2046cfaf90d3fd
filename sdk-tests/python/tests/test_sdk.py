"""centrifuge-python 0.7 (unmodified, from PyPI) against a running Confab stack.

Sequence: connect -> subscribe with get_token -> publish/receive -> disconnect while
others publish -> reconnect and recover -> token expiry and refresh; plus presence,
history, invalid publish, subscribe without a valid token (103) and membership events.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from centrifuge import ClientState, ReplyError, StreamPosition, SubscriptionState

from support import (
    api,
    assert_strictly_increasing,
    chat,
    connect,
    create_room,
    dump_frames,
    forged_secret,
    join_room,
    mint_access,
    mint_sub,
    new_client,
    new_sub,
    register,
    replies,
    subscribe,
    subscription_token,
    wait_for,
)


async def room_with(n: int, **sub_opts):
    users = [await register(f"py{i}") for i in range(n)]
    room = await create_room(users[0])
    for u in users[1:]:
        await join_room(u, room)
    members = []
    for u in users:
        conn = new_client(u)
        await connect(conn)
        rec = new_sub(conn, room, recoverable=True, **sub_opts)
        ctx = await subscribe(conn, rec)
        members.append((conn, rec, ctx))
    return room, members


def describe(*conns):
    return lambda: "\n".join(f"--- {c.user.username}\n{dump_frames(c, 25)}" for c in conns)


async def test_connect_subscribe_publish_receive():
    room, members = await room_with(2)
    (ca, sa, xa), (cb, sb, xb) = members
    for conn, rec, ctx in members:
        assert conn.token_calls == 1, "connection token came from get_token exactly once"
        assert rec.token_calls == 1, "subscription token came from get_token exactly once"
        connect_reply = replies(conn, "connect")[0]["reply"]
        assert connect_reply and connect_reply["connect"]["client"], connect_reply
        assert ctx.channel == room["channel"]
        assert ctx.recoverable is True, replies(conn, "subscribe")
        assert isinstance(ctx.stream_position.epoch, str)

    sent = [
        (ca, sa, {"text": "hello from a"}),
        (cb, sb, {"text": 'héllo from b 🌍 "quoted" \\ back\\slash\nnewline <tag> &amp;'}),
        (ca, sa, {"text": "x" * 4000}),
        (cb, sb, {"text": "   spaces   "}),
        (ca, sa, {"text": "last one"}),
    ]
    for _, rec, data in sent:
        await rec.sub.publish(data)
    for conn, rec, _ in members:
        await wait_for(lambda: len(chat(rec.pubs)) >= len(sent), 10, describe(ca, cb))
    await asyncio.sleep(0.3)
    offsets_by = []
    for conn, rec, _ in members:
        got = chat(rec.pubs)
        assert len(got) == len(sent)
        for i, p in enumerate(got):
            assert p.data == sent[i][2], f"data of publication {i} arrives exactly as sent"
            assert p.info is not None and p.info.user == sent[i][0].user.id, f"info.user of publication {i}"
            assert p.offset > 0
        offsets = [p.offset for p in got]
        assert_strictly_increasing(offsets, conn.user.username)
        # Membership events included: the SDK treats offset 0 as "no position".
        assert all(p.offset > 0 for p in rec.pubs), [(p.offset, p.data) for p in rec.pubs]
        offsets_by.append(offsets)
    assert offsets_by[0] == offsets_by[1], "every subscriber sees the same offsets"

    # Within a short time REST history has every publication with the same offset and data.
    live = chat(sa.pubs)
    rest = []
    for _ in range(100):
        _, body = await api("GET", f"/api/rooms/{room['id']}/messages?limit=200", token=ca.user.token, expect=200)
        rest = [m for m in reversed(body["messages"]) if m["kind"] == "message"]
        if len(rest) >= len(live):
            break
        await asyncio.sleep(0.1)
    assert [(m["offset"], m["data"], m["user"]["id"]) for m in rest] == [
        (p.offset, p.data, sent[i][0].user.id) for i, p in enumerate(live)]

    # The whole stream, room creation's member_joined included, has positive offsets
    # (centrifuge-python moves its position only for offset > 0).
    h = await sa.sub.history(limit=100)
    assert all(p.offset > 0 for p in h.publications), [(p.offset, p.data) for p in h.publications]


async def test_extra_fields_delivered_exactly():
    room, members = await room_with(2)
    data = {"text": "with extras", "n": 42, "f": 1.5, "nested": {"arr": [1, "two", None, True], "empty": {}},
            "uni": "日本語"}
    await members[0][1].sub.publish(data)
    for conn, rec, _ in members:
        await wait_for(lambda: len(chat(rec.pubs)) >= 1, 10, describe(conn))
        assert chat(rec.pubs)[0].data == data


async def test_membership_events_and_leave_unsubscribes():
    owner = await register("pyown")
    room = await create_room(owner)
    oc = new_client(owner)
    await connect(oc)
    osub = new_sub(oc, room, recoverable=True)
    await subscribe(oc, osub)

    joiner = await register("pyjoin")
    await join_room(joiner, room)

    def event(kind, u):
        return [p for p in osub.pubs if isinstance(p.data, dict) and p.data.get("type") == kind
                and (p.data.get("user") or {}).get("id") == u.id]

    await wait_for(lambda: event("member_joined", joiner), 10, lambda: str(osub.pubs))
    joined = event("member_joined", joiner)[0]
    assert joined.data == {"type": "member_joined", "user": {"id": joiner.id, "username": joiner.username}}
    assert joined.offset > 0, joined

    jc = new_client(joiner)
    await connect(jc)
    jsub = new_sub(jc, room, recoverable=True)
    await subscribe(jc, jsub)
    await asyncio.sleep(2.1)  # tokens carry iat in whole seconds: leave clearly after issue
    await api("POST", f"/api/rooms/{room['id']}/leave", token=joiner.token, expect=204)
    await wait_for(lambda: event("member_left", joiner), 10, lambda: str(osub.pubs))
    left = event("member_left", joiner)[0]
    assert left.data == {"type": "member_left", "user": {"id": joiner.id, "username": joiner.username}}
    assert left.offset > joined.offset
    await wait_for(lambda: jsub.unsubscribed, 10,
                   lambda: f"leaving user's subscription not unsubscribed ({jsub.sub.state})\n{dump_frames(jc)}")
    assert jsub.sub.state == SubscriptionState.UNSUBSCRIBED
    assert jc.client.state == ClientState.CONNECTED

    # The subscription token issued before leaving no longer admits; after a rejoin a new one does.
    old_token = replies(jc, "subscribe")[0]["cmd"]["subscribe"]["token"]
    jc.client.remove_subscription(jsub.sub)
    stale = new_sub(jc, room, get_token=None, token=old_token)
    await stale.sub.subscribe()
    await wait_for(lambda: stale.unsubscribed or stale.subscribed, 10, lambda: dump_frames(jc))
    assert not stale.subscribed, "a pre-departure subscription token must not subscribe"
    assert stale.unsubscribed[0].code == 103, stale.unsubscribed[0]
    jc.client.remove_subscription(stale.sub)
    await join_room(joiner, room)
    again = new_sub(jc, room)
    await subscribe(jc, again)
    await osub.sub.publish({"text": "after rejoin"})
    await wait_for(lambda: any(p.data.get("text") == "after rejoin" for p in chat(again.pubs)), 10,
                   lambda: dump_frames(jc))


async def test_presence_and_join_leave():
    room, members = await room_with(2, join_leave=True)
    (ca, sa, _), (cb, sb, _) = members
    presence = await sa.sub.presence()
    assert set(presence.clients) == {ca.client_id, cb.client_id}, presence
    assert {c.user for c in presence.clients.values()} == {ca.user.id, cb.user.id}
    for cid, info in presence.clients.items():
        assert info.client == cid
    stats = await sb.sub.presence_stats()
    assert (stats.num_clients, stats.num_users) == (2, 2)

    third = await register("pypres")
    await join_room(third, room)
    cc = new_client(third)
    await connect(cc)
    sc = new_sub(cc, room, join_leave=True)
    await subscribe(cc, sc)
    await wait_for(lambda: any(j.user == third.id for j in sa.joins), 10, describe(ca))
    assert next(j for j in sa.joins if j.user == third.id).client == cc.client_id
    assert (await sa.sub.presence_stats()).num_clients == 3
    await sc.sub.unsubscribe()
    await wait_for(lambda: any(j.user == third.id for j in sa.leaves), 10, describe(ca))
    for _ in range(50):
        stats = await sa.sub.presence_stats()
        if stats.num_clients == 2:
            break
        await asyncio.sleep(0.1)
    assert (stats.num_clients, stats.num_users) == (2, 2)


async def test_history():
    room, members = await room_with(2)
    (ca, sa, xa), (cb, sb, _) = members
    sent = [{"text": "h1"}, {"text": "h2"}, {"text": "h3"}]
    await sa.sub.publish(sent[0])
    await sb.sub.publish(sent[1])
    await sa.sub.publish(sent[2])
    await wait_for(lambda: len(chat(sa.pubs)) >= 3, 10, describe(ca))
    live = chat(sa.pubs)
    h = await sa.sub.history(limit=100)
    assert h.epoch == xa.stream_position.epoch
    hist = chat(h.publications)
    assert [p.offset for p in hist] == [p.offset for p in live], h
    assert [p.data for p in hist] == sent
    assert [p.info.user for p in hist] == [ca.user.id, cb.user.id, ca.user.id]
    assert h.offset >= live[2].offset
    assert all(p.offset > 0 for p in h.publications), [(p.offset, p.data) for p in h.publications]
    assert_strictly_increasing([p.offset for p in h.publications], "history")
    since = await sb.sub.history(limit=100, since=StreamPosition(offset=live[0].offset, epoch=h.epoch))
    assert [p.offset for p in chat(since.publications)] == [live[1].offset, live[2].offset]
    rev = await sb.sub.history(limit=1, reverse=True)
    assert len(rev.publications) == 1 and rev.publications[0].offset == h.offset


async def test_invalid_publish_keeps_connection():
    room, [(ca, sa, _)] = await room_with(1)
    bad = [
        ({"text": ""}, "empty text"),
        ({"text": "x" * 4001}, "text over 4000 characters"),
        ({"text": 123}, "non-string text"),
        ({"nottext": "x"}, "missing text"),
        ("just a string", "data that is not an object"),
    ]
    for data, what in bad:
        with pytest.raises(ReplyError) as err:
            await sa.sub.publish(data)
        assert err.value.code in (106, 107), f"{what}: got {err.value}"
    assert ca.client.state == ClientState.CONNECTED
    assert sa.sub.state == SubscriptionState.SUBSCRIBED
    await sa.sub.publish({"text": "still works"})
    await wait_for(lambda: any(p.data.get("text") == "still works" for p in chat(sa.pubs)))
    assert len(ca.rec.named("connected")) == 1, "no reconnect happened"
    assert ca.rec.named("disconnected") == []
    assert len(chat(sa.pubs)) == 1


async def test_subscribe_without_valid_token_gets_103():
    a = await register("py103")
    other = await register("py103o")
    room = await create_room(a)
    room2 = await create_room(a)
    conn = new_client(a)
    await connect(conn)

    async def forged(_):
        return mint_sub(a, room["channel"], 600, secret=forged_secret())

    async def other_channel(_):
        return await subscription_token(a, room2)

    async def other_user(_):
        return mint_sub(other, room["channel"], 600)

    async def garbage(_):
        return "not.a.jwt"

    cases = [("no token at all", None), ("forged signature", forged), ("token for another channel", other_channel),
             ("token for another user", other_user), ("garbage token", garbage)]
    for what, get_token in cases:
        rec = new_sub(conn, room, get_token=get_token)
        await rec.sub.subscribe()
        await wait_for(lambda: rec.unsubscribed or rec.subscribed, 10, lambda: f"{what}: {rec.errors}\n{dump_frames(conn)}")
        assert not rec.subscribed, f"{what}: must not subscribe"
        assert rec.unsubscribed[0].code == 103, f"{what}: {rec.unsubscribed[0]}"
        conn.client.remove_subscription(rec.sub)
    assert conn.client.state == ClientState.CONNECTED
    assert len(conn.rec.named("connected")) == 1
    ok = new_sub(conn, room)
    await subscribe(conn, ok)


async def test_disconnect_reconnect_recover():
    room, members = await room_with(3)
    (ca, sa, _), (cb, sb, _), (cc, sc, _) = members
    await sa.sub.publish({"text": "before 1"})
    await sb.sub.publish({"text": "before 2"})
    for conn, rec, _ in members:
        await wait_for(lambda: len(chat(rec.pubs)) >= 2, 10, describe(conn))

    await cc.client.disconnect()
    assert sc.sub.state == SubscriptionState.SUBSCRIBING
    missed = []
    for i in range(6):
        conn, rec = (cb, sb) if i % 2 else (ca, sa)
        data = {"text": f"missed {i}"}
        await rec.sub.publish(data)
        missed.append((data, conn.user.id))
    await wait_for(lambda: len(chat(sa.pubs)) >= 8, 10, describe(ca))

    before = len(sc.subscribed)
    await cc.client.connect()
    await wait_for(lambda: len(sc.subscribed) > before, 10, describe(cc))
    ctx = sc.subscribed[-1]
    last = replies(cc, "subscribe")[-1]
    assert last["cmd"]["subscribe"].get("recover") is True
    assert ctx.was_recovering is True
    assert ctx.recovered is True, last
    await wait_for(lambda: len(chat(sc.pubs)) >= 8, 10, describe(cc))
    await sa.sub.publish({"text": "after"})
    for conn, rec, _ in members:
        await wait_for(lambda: len(chat(rec.pubs)) >= 9, 10, describe(conn))
    await asyncio.sleep(0.3)
    c_got, a_got = chat(sc.pubs), chat(sa.pubs)
    assert [p.data["text"] for p in c_got] == [p.data["text"] for p in a_got]
    assert [p.offset for p in c_got] == [p.offset for p in a_got]
    assert [(p.data, p.info.user) for p in c_got[2:8]] == missed


async def test_abrupt_transport_loss_recovers():
    room, members = await room_with(2)
    (ca, sa, _), (cb, sb, _) = members
    await sa.sub.publish({"text": "first"})
    await wait_for(lambda: len(chat(sb.pubs)) >= 1, 10, describe(cb))
    # Drop b's TCP connection without a close handshake, then publish at once.
    cb.client._conn.transport.abort()
    for i in range(5):
        await sa.sub.publish({"text": f"during {i}"})
    await wait_for(lambda: len(sb.subscribed) >= 2, 15, describe(cb))
    await sa.sub.publish({"text": "after"})
    await wait_for(lambda: len(chat(sb.pubs)) >= 7 and len(chat(sa.pubs)) >= 7, 10, describe(ca, cb))
    await asyncio.sleep(0.3)
    assert [p.data["text"] for p in chat(sb.pubs)] == [p.data["text"] for p in chat(sa.pubs)]
    assert [p.offset for p in chat(sb.pubs)] == [p.offset for p in chat(sa.pubs)]
    assert sb.subscribed[-1].was_recovering is True and sb.subscribed[-1].recovered is True


async def test_connection_token_refresh():
    room, [(_, _, _)] = await room_with(1)
    u = await register("pyref")
    await join_room(u, room)

    async def short():
        return mint_access(u, 3)

    conn = new_client(u, get_token=short)
    await connect(conn)
    reply = replies(conn, "connect")[0]["reply"]["connect"]
    assert reply.get("expires") is True, reply
    assert 0 < reply["ttl"] <= 3, reply
    rec = new_sub(conn, room)
    await subscribe(conn, rec)
    await asyncio.sleep(8)
    refreshes = replies(conn, "refresh")
    assert len(refreshes) >= 2, dump_frames(conn)
    for r in refreshes:
        assert r["reply"] and "error" not in r["reply"], r
        assert r["reply"]["refresh"].get("expires") is True, r
    assert conn.token_calls >= 3
    assert len(conn.rec.named("connected")) == 1, "no reconnect was needed"
    assert conn.client.state == ClientState.CONNECTED
    await rec.sub.publish({"text": "after refresh"})
    await wait_for(lambda: len(chat(rec.pubs)) >= 1)


async def test_expired_connection_token_gets_109_then_get_token():
    u = await register("pyexp")
    conn = new_client(u, token=mint_access(u, -60))
    await connect(conn)
    first = replies(conn, "connect")[0]["reply"]
    assert (first.get("error") or {}).get("code") == 109, first
    assert conn.token_calls == 1
    assert conn.client.state == ClientState.CONNECTED


async def test_subscription_token_refresh():
    room, [(ca, sa, _), (cb, sb, _)] = await room_with(2)
    conn = new_client(cb.user)
    await connect(conn)

    async def short(channel):
        return mint_sub(cb.user, channel, 3)

    rec = new_sub(conn, room, get_token=short)
    await subscribe(conn, rec)
    sr = replies(conn, "subscribe")[-1]["reply"]["subscribe"]
    assert sr.get("expires") is True, sr
    assert 0 < sr["ttl"] <= 3, sr
    await asyncio.sleep(8)
    refreshes = replies(conn, "sub_refresh")
    assert len(refreshes) >= 2, dump_frames(conn)
    for r in refreshes:
        assert r["cmd"]["sub_refresh"]["channel"] == room["channel"]
        assert r["reply"] and "error" not in r["reply"], r
        assert r["reply"]["sub_refresh"].get("expires") is True, r
    assert rec.token_calls >= 3
    assert rec.sub.state == SubscriptionState.SUBSCRIBED
    assert len(rec.subscribed) == 1, "no resubscribe was needed"
    await sa.sub.publish({"text": "after sub refresh"})
    await wait_for(lambda: any(p.data.get("text") == "after sub refresh" for p in chat(rec.pubs)), 10,
                   lambda: dump_frames(conn))


async def test_expired_subscription_token_gets_109_then_get_token():
    u = await register("pysexp")
    room = await create_room(u)
    conn = new_client(u)
    await connect(conn)
    rec = new_sub(conn, room, token=mint_sub(u, room["channel"], -60))
    await subscribe(conn, rec)
    first = replies(conn, "subscribe")[0]["reply"]
    assert (first.get("error") or {}).get("code") == 109, first
    assert rec.token_calls == 1


EXPIRED_CLOSE_DELAY = int(os.environ.get("CONFAB_GATEWAY_EXPIRED_CLOSE_DELAY_SECS", "25"))


async def test_pings_keep_idle_connection_and_unrefreshed_tokens_are_enforced():
    u = await register("pyidle")
    room = await create_room(u)

    async def hang(*_):
        await asyncio.Event().wait()

    idle = new_client(u, max_server_ping_delay=3.0)
    await connect(idle)
    connected_at = time.time()
    connect_reply = replies(idle, "connect")[0]["reply"]["connect"]
    ping = connect_reply.get("ping", 0)
    assert ping > 0, connect_reply

    calls = {"conn": 0, "sub": 0}

    async def conn_token():
        calls["conn"] += 1
        if calls["conn"] == 1:
            return mint_access(u, 2)
        return await hang()

    stale = new_client(u, get_token=conn_token)
    await connect(stale)
    stale_connected_at = time.time()

    async def sub_token(channel):
        calls["sub"] += 1
        if calls["sub"] == 1:
            return mint_sub(u, channel, 2)
        return await hang()

    sub_conn = new_client(u)
    await connect(sub_conn)
    stale_sub = new_sub(sub_conn, room, get_token=sub_token)
    await subscribe(sub_conn, stale_sub)

    def torn_down(conn):
        names = [e[0] for e in conn.rec.events]
        after = names[names.index("connected") + 1:] if "connected" in names else []
        return "connecting" in after or "disconnected" in after

    def stale_ended():
        return torn_down(stale) or any(
            f["dir"] == "in" and "disconnect" in (f["msg"].get("push") or {}) for f in stale.frames)

    def sub_ended():
        return any(f["dir"] == "in" and "unsubscribe" in (f["msg"].get("push") or {})
                   for f in sub_conn.frames) or torn_down(sub_conn)

    await wait_for(lambda: stale_ended() and sub_ended(), max(ping + 5, 2 + EXPIRED_CLOSE_DELAY + 8),
                   lambda: f"stale connection ended: {stale_ended()}, stale subscription ended: {sub_ended()}\n"
                           f"--- stale\n{dump_frames(stale, 10)}\n--- sub\n{dump_frames(sub_conn, 10)}")
    assert time.time() - stale_connected_at >= 2, "not closed before the token expired"
    left = ping + 4 - (time.time() - connected_at)
    if left > 0:
        await asyncio.sleep(left)
    pings = [f for f in idle.frames if f["dir"] == "in" and f["msg"] == {}]
    assert pings, f"at least one server ping in {ping + 4}s\n{dump_frames(idle, 10)}"
    assert len(idle.rec.named("connected")) == 1, "the idle client never reconnected"
    assert not torn_down(idle), idle.rec.events
    assert idle.client.state == ClientState.CONNECTED


async def test_one_client_three_rooms_recovers_every_room():
    u = await register("pymulti")
    p = await register("pymultip")
    rooms = [await create_room(u) for _ in range(3)]
    for r in rooms:
        await join_room(p, r)
    conn = new_client(u)
    await connect(conn)
    recs = []
    for r in rooms:
        rec = new_sub(conn, r)
        await subscribe(conn, rec)
        recs.append(rec)
    pconn = new_client(p)
    await connect(pconn)
    precs = []
    for r in rooms:
        rec = new_sub(pconn, r)
        await subscribe(pconn, rec)
        precs.append(rec)
    for pr in precs:
        await pr.sub.publish({"text": "before"})
    for rec in recs:
        await wait_for(lambda: len(chat(rec.pubs)) >= 1, 10, describe(conn))

    await conn.client.disconnect()
    for i in range(3):
        for pr in precs:
            await pr.sub.publish({"text": f"missed {i}"})
    before = [len(r.subscribed) for r in recs]
    await conn.client.connect()
    for i, rec in enumerate(recs):
        await wait_for(lambda: len(rec.subscribed) > before[i], 10, describe(conn))
        assert rec.subscribed[-1].recovered is True, f"room {i}"
        await wait_for(lambda: len(chat(rec.pubs)) >= 4 and len(chat(precs[i].pubs)) >= 4, 10, describe(conn, pconn))
        assert [x.data["text"] for x in chat(rec.pubs)] == ["before", "missed 0", "missed 1", "missed 2"]
        assert [x.offset for x in chat(rec.pubs)] == [x.offset for x in chat(precs[i].pubs)]


async def test_repeated_transport_loss_under_continuous_publishing():
    room, members = await room_with(2)
    (ca, sa, _), (cb, sb, _) = members
    state = {"stop": False, "n": 0}

    async def publisher():
        while not state["stop"]:
            await sa.sub.publish({"text": f"c{state['n']}"})
            state["n"] += 1
            await asyncio.sleep(0.06)

    task = asyncio.ensure_future(publisher())
    try:
        for cycle in range(4):
            await asyncio.sleep(0.4)
            before = len(sb.subscribed)
            cb.client._conn.transport.abort()
            await wait_for(lambda: len(sb.subscribed) > before, 15, describe(cb))
            assert sb.subscribed[-1].recovered is True, f"cycle {cycle}"
        await asyncio.sleep(0.3)
    finally:
        state["stop"] = True
        await task
    n = state["n"]
    await wait_for(lambda: len(chat(sb.pubs)) >= n and len(chat(sa.pubs)) >= n, 10, describe(ca, cb))
    await asyncio.sleep(0.3)
    want = [f"c{i}" for i in range(n)]
    assert [p.data["text"] for p in chat(sa.pubs)] == want
    assert [p.data["text"] for p in chat(sb.pubs)] == want
    assert [p.offset for p in chat(sb.pubs)] == [p.offset for p in chat(sa.pubs)]


async def test_message_id_tags_and_change_events():
    room, members = await room_with(2)
    (ca, sa, _), (cb, sb, _) = members
    await sa.sub.publish({"text": "first"})
    for conn, rec, _ in members:
        await wait_for(lambda: len(chat(rec.pubs)) >= 1, 10, describe(ca, cb))
    first = chat(sb.pubs)[0]
    mid = (first.tags or {}).get("message_id", "")
    assert len(mid) == 36, f"tags.message_id: {first.tags!r}"

    stored = None
    for _ in range(100):
        _, page = await api("GET", f"/api/rooms/{room['id']}/messages", token=ca.user.token, expect=200)
        stored = next((m for m in page["messages"] if m["id"] == mid), None)
        if stored:
            break
        await asyncio.sleep(0.1)
    assert stored and stored["offset"] == first.offset

    base = f"/api/rooms/{room['id']}/messages/{mid}"
    _, edited = await api("PATCH", base, body={"text": "first!"}, token=ca.user.token, expect=200)
    await api("PUT", f"{base}/reactions/:tada:", token=cb.user.token, expect=204)
    await api("DELETE", base, token=ca.user.token, expect=204)

    def changes(rec):
        return [p.data for p in rec.pubs if isinstance(p.data, dict) and p.data.get("type") in
                ("message_edited", "reaction_added", "message_deleted")]

    for conn, rec, _ in members:
        await wait_for(lambda: len(changes(rec)) >= 3, 10, describe(ca, cb))
        assert changes(rec) == [
            {"type": "message_edited", "message_id": mid, "text": "first!", "edited_at": edited["edited_at"]},
            {"type": "reaction_added", "message_id": mid, "emoji": ":tada:",
             "user": {"id": cb.user.id, "username": cb.user.username}},
            {"type": "message_deleted", "message_id": mid},
        ]
        assert_strictly_increasing([p.offset for p in rec.pubs], conn.user.username)
