"""Helpers for the centrifuge-python compatibility tests: stack addresses, REST API,
HS256 token minting, an event recorder and a frame log.

The frame log wraps two methods of the Client instance (the command sender and the
reply dispatcher) to record what went over the wire; it calls through unchanged, so
the SDK behaves exactly as shipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import httpx
import jwt

from centrifuge import (
    Client,
    ClientEventHandler,
    SubscriptionEventHandler,
)

REPO_ROOT = Path(__file__).resolve().parents[3]


def load_env() -> Dict[str, str]:
    env_file = Path(os.environ.get("CONFAB_ENV_FILE", REPO_ROOT / ".dev" / "env"))
    from_file: Dict[str, str] = {}
    if env_file.exists():
        for raw in env_file.read_text().splitlines():
            line = raw.strip()
            if line.startswith("export "):
                line = line[len("export "):]
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            from_file[key.strip()] = value
    out = {}
    for key in ("CONFAB_API_URL", "CONFAB_WS_URL", "CONFAB_JWT_SECRET"):
        value = os.environ.get(key) or from_file.get(key)
        if not value:
            raise RuntimeError(f"missing {key}: set it or run ops/dev up -d (reads {env_file})")
        out[key] = value
    out["CONFAB_API_URL"] = out["CONFAB_API_URL"].rstrip("/")
    return out


ENV = load_env()
PASSWORD = "sdk-test-password-1"


# ------------------------------------------------------------------ REST


async def api(method: str, path: str, *, body: Any = None, token: str = "", expect: Optional[int] = None):
    headers = {"accept": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(timeout=15) as http:
        res = await http.request(method, ENV["CONFAB_API_URL"] + path, json=body, headers=headers)
    if expect is not None and res.status_code != expect:
        raise AssertionError(f"{method} {path}: expected {expect}, got {res.status_code}: {res.text}")
    try:
        payload = res.json() if res.content else None
    except ValueError:
        payload = None
    return res.status_code, payload


@dataclass
class User:
    id: str
    username: str
    token: str
    password: str = PASSWORD


async def register(prefix: str = "py") -> User:
    username = f"{prefix}_{secrets.token_hex(6)}"
    _, body = await api("POST", "/api/auth/register", body={"username": username, "password": PASSWORD}, expect=201)
    assert body["user"]["username"] == username
    return User(id=body["user"]["id"], username=username, token=body["token"])


async def login(u: User) -> str:
    _, body = await api("POST", "/api/auth/login", body={"username": u.username, "password": u.password}, expect=200)
    return body["token"]


async def create_room(owner: User) -> Dict[str, Any]:
    _, room = await api(
        "POST", "/api/rooms",
        body={"name": f"py room {secrets.token_hex(3)}", "visibility": "public"},
        token=owner.token, expect=201,
    )
    assert room["channel"] == f"room:{room['id']}"
    return room


async def join_room(u: User, room: Dict[str, Any]) -> None:
    await api("POST", f"/api/rooms/{room['id']}/join", body={}, token=u.token, expect=200)


async def subscription_token(u: User, room: Dict[str, Any]) -> str:
    _, body = await api("POST", f"/api/rooms/{room['id']}/subscription-token", token=u.token, expect=200)
    return body["token"]


# ------------------------------------------------------------------ JWT


def mint_access(u: User, ttl: int, secret: Optional[str] = None) -> str:
    now = int(time.time())
    claims = {"sub": u.id, "name": u.username, "iat": now, "exp": now + ttl, "iss": "confab", "aud": "confab"}
    return jwt.encode(claims, secret or ENV["CONFAB_JWT_SECRET"], algorithm="HS256")


def mint_sub(u: User, channel: str, ttl: int, secret: Optional[str] = None, sub: Optional[str] = None) -> str:
    now = int(time.time())
    claims = {"sub": sub or u.id, "channel": channel, "iat": now, "exp": now + ttl,
              "iss": "confab", "aud": "confab:subscription"}
    return jwt.encode(claims, secret or ENV["CONFAB_JWT_SECRET"], algorithm="HS256")


def forged_secret() -> str:
    return "not-the-secret-" + str(uuid.uuid4())


# ------------------------------------------------------------------ recording


class ClientRec(ClientEventHandler):
    def __init__(self) -> None:
        self.events: List[tuple] = []

    async def on_connecting(self, ctx):
        self.events.append(("connecting", ctx, time.time()))

    async def on_connected(self, ctx):
        self.events.append(("connected", ctx, time.time()))

    async def on_disconnected(self, ctx):
        self.events.append(("disconnected", ctx, time.time()))

    async def on_error(self, ctx):
        self.events.append(("error", ctx, time.time()))

    def named(self, name: str) -> list:
        return [e[1] for e in self.events if e[0] == name]


class SubRec(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.pubs: list = []
        self.joins: list = []
        self.leaves: list = []
        self.subscribed: list = []
        self.unsubscribed: list = []
        self.errors: list = []
        self.token_calls = 0

    async def on_subscribed(self, ctx):
        self.subscribed.append(ctx)

    async def on_unsubscribed(self, ctx):
        self.unsubscribed.append(ctx)

    async def on_publication(self, ctx):
        self.pubs.append(ctx.pub)

    async def on_join(self, ctx):
        self.joins.append(ctx.info)

    async def on_leave(self, ctx):
        self.leaves.append(ctx.info)

    async def on_error(self, ctx):
        self.errors.append(ctx)


@dataclass
class Conn:
    user: User
    client: Client
    rec: ClientRec
    frames: List[Dict[str, Any]] = field(default_factory=list)
    token_calls: int = 0
    client_id: str = ""


def _attach_frame_log(conn: Conn) -> None:
    client = conn.client
    send = client._send_commands
    dispatch = client._process_reply

    async def send_commands(commands):
        for command in commands:
            conn.frames.append({"dir": "out", "msg": json.loads(json.dumps(command, default=str)), "at": time.time()})
        return await send(commands)

    async def process_reply(reply):
        conn.frames.append({"dir": "in", "msg": reply, "at": time.time()})
        return await dispatch(reply)

    client._send_commands = send_commands  # type: ignore[method-assign]
    client._process_reply = process_reply  # type: ignore[method-assign]


def dump_frames(conn: Conn, last: int = 40) -> str:
    return "\n".join(f"{f['dir']} {json.dumps(f['msg'], default=str)}" for f in conn.frames[-last:])


def replies(conn: Conn, kind: str) -> List[Dict[str, Any]]:
    """Each outgoing `kind` command with its reply (or None)."""
    out = []
    for f in conn.frames:
        if f["dir"] == "out" and kind in f["msg"]:
            cmd_id = f["msg"].get("id")
            reply = next((g["msg"] for g in conn.frames
                          if g["dir"] == "in" and g["msg"].get("id") == cmd_id and g["at"] >= f["at"]), None)
            out.append({"cmd": f["msg"], "reply": reply})
    return out


OPEN: List[Client] = []


def new_client(u: User, get_token: Optional[Callable] = None, token: str = "",
               max_server_ping_delay: float = 10.0) -> Conn:
    rec = ClientRec()
    holder: Dict[str, Conn] = {}

    async def fetch_token() -> str:
        holder["c"].token_calls += 1
        if get_token is not None:
            return await get_token()
        return await login(u)

    client = Client(
        ENV["CONFAB_WS_URL"], events=rec, token=token, get_token=fetch_token,
        timeout=10.0, min_reconnect_delay=0.2, max_reconnect_delay=2.0, proxy=None,
        max_server_ping_delay=max_server_ping_delay,
    )
    conn = Conn(user=u, client=client, rec=rec)
    holder["c"] = conn
    _attach_frame_log(conn)
    OPEN.append(client)
    return conn


async def connect(conn: Conn) -> None:
    await conn.client.connect()
    await conn.client.ready(timeout=10)
    conn.client_id = conn.client.client_id


def new_sub(conn: Conn, room: Dict[str, Any], get_token: Any = "default", token: str = "", **opts):
    rec = SubRec()
    if get_token == "default":
        async def default_token(channel: str) -> str:
            return await subscription_token(conn.user, room)
        get_token = default_token

    counted = None
    if get_token is not None:
        inner = get_token

        async def counted(channel: str) -> str:
            rec.token_calls += 1
            return await inner(channel)

    sub = conn.client.new_subscription(room["channel"], events=rec, token=token, get_token=counted, **opts)
    rec.sub = sub  # type: ignore[attr-defined]
    return rec


async def subscribe(conn: Conn, rec: SubRec, timeout: float = 10.0):
    before = len(rec.subscribed)
    await rec.sub.subscribe()
    await wait_for(lambda: len(rec.subscribed) > before, timeout,
                   lambda: f"subscribe did not complete: errors={rec.errors} unsubscribed={rec.unsubscribed}\n"
                           + dump_frames(conn))
    return rec.subscribed[-1]


async def close_all() -> None:
    while OPEN:
        c = OPEN.pop()
        try:
            await c.disconnect()
        except Exception:  # noqa: BLE001 - teardown of a client that may be gone already
            pass


async def wait_for(pred: Callable[[], bool], timeout: float = 10.0, describe: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for condition\n{describe()}")
        await asyncio.sleep(0.02)


def chat(pubs: list) -> list:
    return [p for p in pubs if isinstance(p.data, dict) and isinstance(p.data.get("text"), str) and "type" not in p.data]


def assert_strictly_increasing(offsets: List[int], what: str) -> None:
    for i in range(1, len(offsets)):
        assert offsets[i] > offsets[i - 1], f"{what}: offsets not strictly increasing at {i}: {offsets}"
