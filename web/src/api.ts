// REST client for auth-api (same origin, relative URLs), per CONTRACT.md §3 and §7.

export interface User {
  id: string;
  username: string;
}

export interface Room {
  id: string;
  name: string;
  visibility: 'public' | 'private';
  requires_password: boolean;
  owner_id: string;
  created_at: string;
  channel: string;
  member_count: number;
  is_member: boolean;
  /** A direct room of two people; `name` is the other person's username. */
  direct: boolean;
  /** The caller's role; null when not a member. */
  my_role: Role | null;
  /** The offset the caller last marked read; null before the first read. */
  last_read_offset: number | null;
  /** Chat messages from others the caller has not read. */
  unread_count: number;
}

export type Role = 'owner' | 'moderator' | 'member';

/** How far one member has read (`GET /api/rooms/{id}/reads`). */
export interface ReadReceipt {
  user: User;
  offset: number;
}

/** One page of `GET /api/rooms`, in creation order. */
export interface RoomPage {
  rooms: Room[];
  /** The `after` of the next page; null on the last page. */
  next_after: string | null;
}

export type MessageKind = 'message' | 'member_joined' | 'member_left';

/** The reactions of one emoji to a message (CONTRACT §7). */
export interface Reaction {
  emoji: string;
  count: number;
  /** Whether the caller is one of those who reacted. */
  me: boolean;
}

export interface Message {
  id: string;
  room_id: string;
  offset: number;
  kind: MessageKind;
  user: User;
  /** null once the message is deleted. */
  data: unknown;
  created_at: string;
  edited_at?: string | null;
  deleted?: boolean;
  reply_to?: string | null;
  reactions?: Reaction[];
}

/** One page of `GET /api/search`, newest first. */
export interface SearchPage {
  messages: Message[];
  next_before: string | null;
}

export interface Member {
  user: User;
  role: Role;
  joined_at: string;
}

export interface Session {
  user: User;
  token: string;
  expires_at: string | number | null;
}

/** An error answer from the API (or a network failure, with status 0). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export class Api {
  token: string | null = null;
  /** Called when an authenticated request gets 401 (expired or revoked token). */
  onUnauthorized: (() => void) | null = null;

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const authed = this.token !== null && !path.startsWith('/api/auth/');
    if (authed) headers.Authorization = `Bearer ${this.token}`;
    let res: Response;
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError(0, 'network', 'Cannot reach the server. Check your connection and try again.');
    }
    const text = await res.text();
    let json: unknown = null;
    if (text) {
      try {
        json = JSON.parse(text);
      } catch {
        json = null;
      }
    }
    if (!res.ok) {
      const err = (json as { error?: { code?: string; message?: string } } | null)?.error;
      const code = err?.code ?? `http_${res.status}`;
      const message = err?.message ?? `Request failed (${res.status})`;
      if (res.status === 401 && authed && this.onUnauthorized) this.onUnauthorized();
      throw new ApiError(res.status, code, message);
    }
    return json as T;
  }

  register(username: string, password: string): Promise<Session> {
    return this.request('POST', '/api/auth/register', { username, password });
  }
  login(username: string, password: string): Promise<Session> {
    return this.request('POST', '/api/auth/login', { username, password });
  }
  me(): Promise<User> {
    return this.request('GET', '/api/me');
  }
  /** One page of the room list; pass the previous page's `next_after` for the next. */
  /** A page of the visible rooms, or with `member` of the caller's own
   * (member or invited) only. */
  roomsPage(limit: number, after?: string | null, member = false): Promise<RoomPage> {
    const q = new URLSearchParams({ limit: String(limit) });
    if (after) q.set('after', after);
    if (member) q.set('member', 'true');
    return this.request('GET', `/api/rooms?${q}`);
  }
  room(id: string): Promise<Room> {
    return this.request('GET', `/api/rooms/${encodeURIComponent(id)}`);
  }
  createRoom(name: string, visibility: 'public' | 'private', password?: string): Promise<Room> {
    const body: Record<string, string> = { name, visibility };
    if (password) body.password = password;
    return this.request('POST', '/api/rooms', body);
  }
  join(id: string, password?: string): Promise<Room> {
    return this.request('POST', `/api/rooms/${encodeURIComponent(id)}/join`, password ? { password } : {});
  }
  leave(id: string): Promise<void> {
    return this.request('POST', `/api/rooms/${encodeURIComponent(id)}/leave`);
  }
  invite(id: string, username: string): Promise<unknown> {
    return this.request('POST', `/api/rooms/${encodeURIComponent(id)}/invites`, { username });
  }
  async members(id: string): Promise<Member[]> {
    return (await this.request<{ members: Member[] }>('GET', `/api/rooms/${encodeURIComponent(id)}/members`)).members;
  }
  messages(id: string, limit: number, before?: number | null): Promise<{ messages: Message[]; next_before: number | null }> {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before !== undefined && before !== null) q.set('before', String(before));
    return this.request('GET', `/api/rooms/${encodeURIComponent(id)}/messages?${q}`);
  }
  /** The direct room with `username`: the same room whichever of the two asks. */
  openDm(username: string): Promise<Room> {
    return this.request('POST', '/api/dms', { username });
  }
  /** Moves the read position forward to `offset` (a lower one is ignored). */
  markRead(id: string, offset: number): Promise<void> {
    return this.request('POST', `/api/rooms/${encodeURIComponent(id)}/read`, { offset });
  }
  async reads(id: string): Promise<ReadReceipt[]> {
    return (await this.request<{ reads: ReadReceipt[] }>('GET', `/api/rooms/${encodeURIComponent(id)}/reads`)).reads;
  }
  setRole(id: string, userId: string, role: 'moderator' | 'member'): Promise<Member> {
    return this.request('PATCH', `/api/rooms/${encodeURIComponent(id)}/members/${encodeURIComponent(userId)}`, { role });
  }
  kick(id: string, userId: string): Promise<void> {
    return this.request('POST', `/api/rooms/${encodeURIComponent(id)}/members/${encodeURIComponent(userId)}/kick`);
  }
  ban(id: string, userId: string): Promise<void> {
    return this.request('POST', `/api/rooms/${encodeURIComponent(id)}/bans/${encodeURIComponent(userId)}`);
  }
  unban(id: string, userId: string): Promise<void> {
    return this.request('DELETE', `/api/rooms/${encodeURIComponent(id)}/bans/${encodeURIComponent(userId)}`);
  }
  editMessage(room: string, message: string, text: string): Promise<Message> {
    return this.request('PATCH', `/api/rooms/${encodeURIComponent(room)}/messages/${encodeURIComponent(message)}`, { text });
  }
  deleteMessage(room: string, message: string): Promise<void> {
    return this.request('DELETE', `/api/rooms/${encodeURIComponent(room)}/messages/${encodeURIComponent(message)}`);
  }
  react(room: string, message: string, emoji: string, on: boolean): Promise<void> {
    const path = `/api/rooms/${encodeURIComponent(room)}/messages/${encodeURIComponent(message)}/reactions/${encodeURIComponent(emoji)}`;
    return this.request(on ? 'PUT' : 'DELETE', path);
  }
  search(q: string, roomId?: string | null, before?: string | null, limit = 20): Promise<SearchPage> {
    const p = new URLSearchParams({ q, limit: String(limit) });
    if (roomId) p.set('room_id', roomId);
    if (before) p.set('before', before);
    return this.request('GET', `/api/search?${p}`);
  }
  async subscriptionToken(id: string): Promise<string> {
    return (await this.request<{ token: string }>('POST', `/api/rooms/${encodeURIComponent(id)}/subscription-token`)).token;
  }
}

/** A user-facing sentence for an API error. */
export function describeError(e: unknown): string {
  if (e instanceof ApiError) {
    switch (e.code) {
      case 'wrong_password':
        return 'Wrong password for this room.';
      case 'invite_required':
        return 'This room is invite-only. Ask a member to invite you.';
      case 'banned':
        return 'You are banned from this room.';
      case 'direct_room':
        return 'This is a direct conversation between two people.';
      case 'cannot_dm_self':
        return 'You cannot start a conversation with yourself.';
      case 'network':
        return e.message;
      case 'not_author':
        return 'Only the author can edit a message.';
      case 'not_allowed':
        return 'Only the author, the owner and moderators can delete a message.';
      case 'message_deleted':
        return 'That message was deleted.';
    }
    if (e.status === 404) return 'Not found.';
    if (e.status === 429) return 'Too many attempts. Wait a minute and try again.';
    return e.message || `Request failed (${e.status})`;
  }
  return e instanceof Error ? e.message : String(e);
}
