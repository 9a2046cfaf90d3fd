// The chat view of one room: history from REST (newest page first, older pages on
// scroll-back), live publications from the gateway through centrifuge-js, inline
// membership notices, who is online, the send box, invite and leave; editing,
// deleting, reacting to and replying to messages (CONTRACT §7), with the changes
// others make arriving live as publications of their own.

import {
  Centrifuge,
  Subscription,
  UnauthorizedError,
  type PublicationContext,
  type SubscribedContext,
  type SubscriptionOptions,
  type ClientInfo,
} from 'centrifuge';
import { Api, ApiError, describeError, type Member, type Message, type Role, type Room, type User } from './api';
import { h, replace, timeEl, field } from './dom';
import { Names, usernameFromInfo } from './names';

/** REST page size for history. */
export const PAGE_SIZE = 50;
/** The contract's limit on a message's text. */
const MAX_TEXT = 4000;
/** At most one typing notice per this many milliseconds while the user types. */
const TYPING_EVERY_MS = 2000;
/** A typing indicator disappears this long after the last notice. */
const TYPING_SHOWN_MS = 3000;
/** How often read receipts ("seen by") are fetched while a room is open. */
const READS_EVERY_MS = 3000;

export interface RoomHost {
  api: Api;
  me: User;
  client: Centrifuge;
  names: Names;
  /** The user left the room (or was removed from it). */
  onLeft(room: Room): void;
  /** Go back to the room list (narrow screens). */
  onBack(): void;
  /** Someone joined or left the room (member counts changed). */
  onMembership(): void;
  /** The user has read the room up to `offset`. */
  onRead(room: Room, offset: number): void;
  /** Open (or start) the direct room with `username`. */
  openDm(username: string): void;
  /** A moderator kicked or banned the user; `text` says so. */
  onRemoved(room: Room, text: string): void;
}

interface Item {
  offset: number;
  el: HTMLElement;
}

type MemberEvent = {
  type: 'member_joined' | 'member_left';
  user: User;
  /** For a removal by a moderator: `kicked` or `banned`. */
  reason?: 'kicked' | 'banned';
  /** For a removal by a moderator: who did it. */
  by?: User;
};

function userOf(v: unknown): User | null {
  if (!v || typeof v !== 'object') return null;
  const u = v as Record<string, unknown>;
  return typeof u.id === 'string' && typeof u.username === 'string' ? { id: u.id, username: u.username } : null;
}

/** The emoji the reaction picker offers (any emoji or :short_name: is valid). */
export const QUICK_REACTIONS = ['👍', '❤️', '😂', '🎉', '😮', '😢'];

/** One emoji's reactions to a message as this client knows them. */
interface ReactionState {
  count: number;
  me: boolean;
  /** Others seen reacting live, so a repeated event is not counted twice. */
  others: Set<string>;
}

/** A chat message on screen, by id. */
interface MsgState {
  id: string;
  offset: number;
  userId: string;
  el: HTMLElement;
  textEl: HTMLElement;
  reactionsEl: HTMLElement;
  text: string;
  deleted: boolean;
  replyTo: string | null;
  reactions: Map<string, ReactionState>;
}

/** A change of an earlier message, as published on the room's channel. */
type ChangeEvent =
  | { type: 'message_edited'; message_id: string; text: string; edited_at: string }
  | { type: 'message_deleted'; message_id: string }
  | { type: 'reaction_added' | 'reaction_removed'; message_id: string; emoji: string; user: User };

function changeEvent(data: unknown): ChangeEvent | null {
  if (!data || typeof data !== 'object') return null;
  const d = data as Record<string, unknown>;
  if (typeof d.message_id !== 'string') return null;
  switch (d.type) {
    case 'message_edited':
      return typeof d.text === 'string' ? (d as unknown as ChangeEvent) : null;
    case 'message_deleted':
      return d as unknown as ChangeEvent;
    case 'reaction_added':
    case 'reaction_removed': {
      const u = d.user as Record<string, unknown> | undefined;
      return typeof d.emoji === 'string' && u && typeof u.id === 'string' ? (d as unknown as ChangeEvent) : null;
    }
  }
  return null;
}

function replyToOf(data: unknown): string | null {
  if (data && typeof data === 'object') {
    const r = (data as { reply_to?: unknown }).reply_to;
    if (typeof r === 'string') return r;
  }
  return null;
}


function memberEvent(data: unknown): MemberEvent | null {
  if (!data || typeof data !== 'object') return null;
  const d = data as Record<string, unknown>;
  if (d.type !== 'member_joined' && d.type !== 'member_left') return null;
  const user = userOf(d.user);
  if (!user) return null;
  const ev: MemberEvent = { type: d.type, user };
  const by = userOf(d.by);
  if ((d.reason === 'kicked' || d.reason === 'banned') && by) {
    ev.reason = d.reason;
    ev.by = by;
  }
  return ev;
}

/** The user in a typing publication (`{"type": "typing", "user": {...}}`), if it is one. */
function typingUser(data: unknown): User | null {
  if (!data || typeof data !== 'object') return null;
  const d = data as Record<string, unknown>;
  return d.type === 'typing' ? userOf(d.user) : null;
}

/** Who may do what to a member, by roles. */
function mayModerate(mine: Role | null, theirs: Role): boolean {
  return (mine === 'owner' || mine === 'moderator') && theirs !== 'owner';
}

function textOf(data: unknown): string {
  if (data && typeof data === 'object' && typeof (data as { text?: unknown }).text === 'string') {
    return (data as { text: string }).text;
  }
  return JSON.stringify(data);
}

/** Runs a change of a message, again a few times while the server does not
 * know the message yet: a message just sent reaches history a moment after
 * the gateway acknowledged it. */
async function whenStored<T>(change: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await change();
    } catch (e) {
      if (!(e instanceof ApiError && e.code === 'message_not_found') || attempt >= 8) throw e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

export class RoomView {
  readonly el: HTMLElement;
  private readonly scroller: HTMLDivElement;
  private readonly list: HTMLOListElement;
  private readonly historyTop: HTMLDivElement;
  private readonly onlineEl: HTMLUListElement;
  private readonly onlineCount: HTMLSpanElement;
  private readonly subStatus: HTMLSpanElement;
  private readonly sendForm: HTMLFormElement;
  private readonly input: HTMLTextAreaElement;
  private readonly sendError: HTMLParagraphElement;
  private readonly inviteStatus: HTMLParagraphElement;

  private items: Item[] = [];
  private seen = new Set<number>();
  /** Chat messages on screen, by id. */
  private msgs = new Map<string, MsgState>();
  /** Offsets of the change events already applied (recovery may repeat them). */
  private seenChanges = new Set<number>();
  /** The message the next send answers. */
  private replyingTo: string | null = null;
  private readonly replyBar: HTMLDivElement;
  /** Cursor for the next older REST page; null once history is exhausted. */
  private nextBefore: number | null = null;
  private loadingOlder = false;
  private sub: Subscription | null = null;
  /** user id → connected client ids, from presence and join/leave pushes. */
  private online = new Map<string, Set<string>>();
  private destroyed = false;
  private membersFetchedAt = 0;
  private membersTimer: number | null = null;
  /** The highest offset shown, and the highest sent as read. */
  private newestOffset = -1;
  private readSent = -1;
  private readTimer: number | null = null;
  private readsInterval: number | null = null;
  private readonly seenByEl: HTMLParagraphElement;
  private readonly typingEl: HTMLParagraphElement;
  /** user id → (username, timer that hides them). */
  private typing = new Map<string, { name: string; timer: number }>();
  private lastTypingSent = 0;
  private readonly membersList: HTMLUListElement;
  private readonly membersStatus: HTMLParagraphElement;
  private myRole: Role | null;
  private readonly onVisible = () => this.scheduleRead();

  constructor(
    private readonly host: RoomHost,
    readonly room: Room,
  ) {
    const { names } = host;
    this.myRole = room.my_role ?? null;
    this.seenByEl = h('p', { class: 'seen-by', 'aria-live': 'polite', hidden: true });
    this.typingEl = h('p', { class: 'typing', 'aria-live': 'polite', hidden: true });
    this.membersList = h('ul', { class: 'member-list', 'aria-label': 'Members' });
    this.membersStatus = h('p', { class: 'form-status', role: 'status' });
    this.historyTop = h('div', { class: 'history-top' });
    this.list = h('ol', { class: 'messages', 'aria-label': `Messages in ${room.name}`, role: 'log', 'aria-live': 'polite' });
    this.scroller = h('div', { class: 'scroller', tabindex: '0' }, this.historyTop, this.list);
    this.scroller.addEventListener('scroll', () => this.onScroll(), { passive: true });

    this.onlineCount = h('span', { class: 'online-count' }, '0');
    this.onlineEl = h('ul', { class: 'online-list', 'aria-label': 'Online now' });
    this.subStatus = h('span', { class: 'sub-status', role: 'status' }, 'Connecting…');

    this.input = h('textarea', {
      name: 'text',
      rows: '1',
      maxlength: String(MAX_TEXT),
      placeholder: 'Write a message…',
      'aria-label': 'Message',
      autocomplete: 'off',
      oninput: () => {
        this.autosize();
        this.onTyping();
      },
      onkeydown: (e: KeyboardEvent) => {
        if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
          e.preventDefault();
          this.sendForm.requestSubmit();
        }
      },
    });
    this.sendError = h('p', { class: 'error send-error', role: 'alert' });
    this.replyBar = h('div', { class: 'reply-bar', hidden: true });
    this.sendForm = h(
      'form',
      { class: 'send', onsubmit: (e: Event) => this.onSend(e) },
      this.input,
      h('button', { type: 'submit', class: 'primary' }, 'Send'),
    );

    this.inviteStatus = h('p', { class: 'form-status', role: 'status' });
    const inviteForm = h(
      'form',
      { class: 'inline-form', onsubmit: (e: Event) => this.onInvite(e) },
      h('label', { for: 'invite-username', class: 'sr-only' }, 'Username to invite'),
      h('input', { id: 'invite-username', name: 'username', placeholder: 'Username', required: true, autocomplete: 'off' }),
      h('button', { type: 'submit' }, 'Invite'),
    );

    const badge = roomBadge(room);
    this.el = h(
      'section',
      { class: 'room', 'aria-labelledby': 'room-title', 'data-room-id': room.id },
      h(
        'header',
        { class: 'room-header' },
        h('button', { class: 'back ghost', type: 'button', 'aria-label': 'Back to rooms', onclick: () => host.onBack() }, '←'),
        h('div', { class: 'room-title-wrap' }, h('h2', { id: 'room-title' }, room.name), badge, this.subStatus),
        h(
          'div',
          { class: 'room-actions' },
          h(
            'details',
            {
              class: 'popover members-popover',
              ontoggle: (e: Event) => {
                if ((e.currentTarget as HTMLDetailsElement).open) this.refreshMembers();
              },
            },
            h('summary', null, 'Members'),
            h('div', { class: 'popover-body' }, this.membersList, this.membersStatus),
          ),
          room.direct
            ? null
            : h(
            'details',
            {
              class: 'popover',
              onkeydown: (e: KeyboardEvent) => {
                const d = e.currentTarget as HTMLDetailsElement;
                if (e.key === 'Escape' && d.open) {
                  d.open = false;
                  d.querySelector('summary')?.focus();
                }
              },
            },
            h('summary', null, 'Invite'),
            h('div', { class: 'popover-body' }, inviteForm, this.inviteStatus, h('p', { class: 'hint' }, 'Room ID: ', h('code', { class: 'room-id' }, room.id))),
              ),
          h('button', { type: 'button', class: 'danger', onclick: () => this.onLeave() }, 'Leave'),
        ),
      ),
      h(
        'div',
        { class: 'online' },
        h('span', { class: 'online-label' }, 'Online ', this.onlineCount, ':'),
        this.onlineEl,
      ),
      this.scroller,
      this.seenByEl,
      this.typingEl,
      this.sendError,
      this.replyBar,
      this.sendForm,
    );
    names.set(host.me.id, host.me.username);
    document.addEventListener('visibilitychange', this.onVisible);
  }

  /** Loads the newest history page, then subscribes from its last offset;
   * then shows `jump` (a message id) when given. */
  async start(jump?: string | null): Promise<void> {
    this.setHistoryTop('loading');
    let since: number | null = null;
    try {
      since = await this.mergeLatest(true);
    } catch (e) {
      this.setHistoryTop('error', describeError(e));
    }
    if (this.destroyed) return;
    this.scrollToBottom();
    this.subscribe(since);
    this.refreshMembers();
    this.scheduleRead();
    void this.refreshReads();
    this.readsInterval = window.setInterval(() => void this.refreshReads(), READS_EVERY_MS);
    if (jump) await this.jumpTo(jump);
    else void this.fillViewport();
  }

  /** Scrolls to message `id`, loading older pages until it is there, and
   * highlights it. */
  async jumpTo(id: string): Promise<void> {
    for (let i = 0; i < 40 && !this.msgs.has(id) && this.nextBefore !== null && !this.destroyed; i++) {
      await this.loadOlder();
    }
    const m = this.msgs.get(id);
    if (!m) {
      this.showSendError('That message is not in this room’s history any more.');
      return;
    }
    m.el.scrollIntoView({ block: 'center' });
    m.el.classList.add('highlight');
    setTimeout(() => m.el.classList.remove('highlight'), 2500);
  }

  focus(): void {
    this.input.focus();
  }

  destroy(): void {
    // What was shown counts as read even when the view closes at once.
    if (this.readTimer !== null) {
      clearTimeout(this.readTimer);
      this.readTimer = null;
      void this.markRead();
    }
    this.destroyed = true;
    if (this.membersTimer !== null) clearTimeout(this.membersTimer);
    if (this.readsInterval !== null) clearInterval(this.readsInterval);
    for (const t of this.typing.values()) clearTimeout(t.timer);
    document.removeEventListener('visibilitychange', this.onVisible);
    if (this.sub) {
      this.sub.removeAllListeners();
      this.sub.unsubscribe();
      this.host.client.removeSubscription(this.sub);
      this.sub = null;
    }
  }

  // ---- history -------------------------------------------------------------

  /** Fetches the newest page and merges it. Returns the highest offset seen. */
  private async mergeLatest(first: boolean): Promise<number | null> {
    const page = await this.host.api.messages(this.room.id, PAGE_SIZE);
    if (this.destroyed) return null;
    const stick = this.nearBottom();
    const newest = this.items.length ? this.items[this.items.length - 1].offset : null;
    const oldestInPage = page.messages.length ? page.messages[page.messages.length - 1].offset : null;
    if (!first && newest !== null && oldestInPage !== null && oldestInPage > newest && page.next_before !== null) {
      // More was missed than one page holds: start over from this page rather
      // than show a silent gap; older messages load on scroll-back as usual.
      this.items = [];
      this.seen.clear();
      this.msgs.clear();
      this.list.replaceChildren();
      first = true;
    }
    for (const m of page.messages) this.addHistory(m);
    if (first) this.nextBefore = page.next_before;
    this.setHistoryTop(this.nextBefore === null ? 'start' : 'more');
    if (stick) this.scrollToBottom();
    return this.items.length ? this.items[this.items.length - 1].offset : null;
  }

  private async loadOlder(): Promise<void> {
    if (this.loadingOlder || this.nextBefore === null || this.destroyed) return;
    this.loadingOlder = true;
    this.setHistoryTop('loading');
    try {
      const page = await this.host.api.messages(this.room.id, PAGE_SIZE, this.nextBefore);
      if (this.destroyed) return;
      const prevHeight = this.scroller.scrollHeight;
      const prevTop = this.scroller.scrollTop;
      for (const m of page.messages) this.addHistory(m);
      this.nextBefore = page.next_before;
      this.setHistoryTop(this.nextBefore === null ? 'start' : 'more');
      this.scroller.scrollTop = prevTop + (this.scroller.scrollHeight - prevHeight);
    } catch (e) {
      this.setHistoryTop('error', describeError(e));
    } finally {
      this.loadingOlder = false;
    }
  }

  /** Loads older pages while the list does not fill the viewport (no scrollbar to scroll back with). */
  private async fillViewport(): Promise<void> {
    for (let i = 0; i < 5 && !this.destroyed && this.nextBefore !== null; i++) {
      if (this.scroller.scrollHeight > this.scroller.clientHeight + 40) return;
      await this.loadOlder();
    }
  }

  private onScroll(): void {
    if (this.scroller.scrollTop < 120) void this.loadOlder();
  }

  private setHistoryTop(state: 'loading' | 'more' | 'start' | 'error', message?: string): void {
    if (state === 'loading') {
      replace(this.historyTop, h('span', { class: 'muted' }, 'Loading messages…'));
    } else if (state === 'more') {
      replace(this.historyTop, h('button', { type: 'button', class: 'ghost load-older', onclick: () => void this.loadOlder() }, 'Load older messages'));
    } else if (state === 'start') {
      replace(this.historyTop, h('span', { class: 'muted history-start' }, `This is the beginning of ${this.room.name}.`));
    } else {
      replace(
        this.historyTop,
        h('span', { class: 'error' }, `Could not load history: ${message ?? ''}`),
        ' ',
        h('button', { type: 'button', class: 'ghost', onclick: () => void this.loadOlder() }, 'Retry'),
      );
    }
  }

  private addHistory(m: Message): void {
    if (m.user) this.host.names.set(m.user.id, m.user.username);
    const when = new Date(m.created_at);
    if (m.kind === 'member_joined' || m.kind === 'member_left') {
      const ev = memberEvent(m.data);
      const user = ev?.user ?? m.user;
      this.insert(m.offset, this.noticeEl(m.kind, user, when, ev ?? undefined));
    } else if (!this.msgs.has(m.id)) {
      const state = this.messageEl(m.id, m.offset, m.user.id, m.deleted ? '' : textOf(m.data), when, m.reply_to ?? null);
      if (!this.insert(m.offset, state.el)) return;
      this.msgs.set(m.id, state);
      for (const r of m.reactions ?? []) state.reactions.set(r.emoji, { count: r.count, me: r.me, others: new Set() });
      if (m.deleted) this.markDeleted(state);
      else if (m.edited_at) state.el.classList.add('edited');
      this.renderReactions(state);
      this.refreshQuotes(m.id);
    }
  }

  // ---- rendering -------------------------------------------------------------

  private messageEl(id: string, offset: number, userId: string, text: string, when: Date, replyTo: string | null): MsgState {
    const mine = userId === this.host.me.id;
    const textEl = h('div', { class: 'text' }, text);
    const reactionsEl = h('div', { class: 'reactions', 'aria-label': 'Reactions' });
    const el = h(
      'li',
      {
        class: mine ? 'msg mine' : 'msg',
        'data-sender': userId,
        'data-message-id': id,
        'data-ts': String(when.getTime()),
        title: when.toLocaleString(),
      },
      h(
        'div',
        { class: 'meta' },
        this.host.names.span(userId, 'sender'),
        ' ',
        timeEl(when),
        h('span', { class: 'edited-mark' }, ' (edited)'),
      ),
      replyTo ? h('button', { type: 'button', class: 'quote', 'data-reply-to': replyTo, onclick: () => void this.jumpTo(replyTo) }) : null,
      textEl,
      reactionsEl,
    );
    const state: MsgState = { id, offset, userId, el, textEl, reactionsEl, text, deleted: false, replyTo, reactions: new Map() };
    el.append(this.actionsEl(state));
    if (replyTo) this.renderQuote(el.querySelector('.quote') as HTMLElement, replyTo);
    return state;
  }

  /** Reply, react, edit and delete, as far as the caller may. */
  private actionsEl(m: MsgState): HTMLElement {
    const mine = m.userId === this.host.me.id;
    const picker = h(
      'details',
      { class: 'react-picker' },
      h('summary', { 'aria-label': 'Add reaction' }, '☺+'),
      h(
        'div',
        { class: 'react-choices' },
        QUICK_REACTIONS.map((emoji) =>
          h('button', {
            type: 'button',
            class: 'ghost small',
            'aria-label': `React ${emoji}`,
            onclick: (e: Event) => {
              ((e.currentTarget as HTMLElement).closest('details') as HTMLDetailsElement).open = false;
              void this.toggleReaction(m, emoji);
            },
          }, emoji),
        ),
      ),
    );
    return h(
      'div',
      { class: 'msg-actions' },
      h('button', { type: 'button', class: 'ghost small', onclick: () => this.startReply(m) }, 'Reply'),
      picker,
      mine ? h('button', { type: 'button', class: 'ghost small', onclick: () => this.startEdit(m) }, 'Edit') : null,
      h('button', { type: 'button', class: 'ghost small delete-action', hidden: !this.mayDelete(m), onclick: () => void this.deleteMessage(m) }, 'Delete'),
    );
  }

  private mayDelete(m: MsgState): boolean {
    const me = this.host.me.id;
    return m.userId === me || this.room.owner_id === me || this.myRole === 'owner' || this.myRole === 'moderator';
  }

  private renderQuote(quote: HTMLElement, id: string): void {
    const target = this.msgs.get(id);
    const name = target ? (this.host.names.get(target.userId) ?? 'someone') : null;
    const text = !target ? 'an earlier message' : target.deleted ? 'a deleted message' : target.text;
    quote.replaceChildren(h('span', { class: 'quote-mark' }, '↪ '), name ? h('strong', null, `${name}: `) : '', text.length > 140 ? `${text.slice(0, 140)}…` : text);
    quote.setAttribute('aria-label', `Go to the message this answers: ${text}`);
  }

  /** Redraws the quotes of message `id` (it arrived, or changed). */
  private refreshQuotes(id: string): void {
    this.list.querySelectorAll<HTMLElement>('.quote').forEach((q) => {
      if (q.dataset.replyTo === id) this.renderQuote(q, id);
    });
  }

  private renderReactions(m: MsgState): void {
    const buttons: HTMLElement[] = [];
    for (const [emoji, r] of m.reactions) {
      if (r.count <= 0) continue;
      buttons.push(
        h('button', {
          type: 'button',
          class: r.me ? 'reaction me' : 'reaction',
          'data-emoji': emoji,
          'aria-pressed': String(r.me),
          'aria-label': `${emoji} ${r.count}`,
          onclick: () => void this.toggleReaction(m, emoji),
        }, `${emoji} `, h('span', { class: 'count' }, String(r.count))),
      );
    }
    m.reactionsEl.replaceChildren(...buttons);
  }

  private markDeleted(m: MsgState): void {
    m.deleted = true;
    m.text = '';
    m.reactions.clear();
    m.el.classList.add('deleted');
    m.textEl.textContent = 'This message was deleted.';
    m.el.querySelector('.msg-actions')?.remove();
    this.renderReactions(m);
    if (this.replyingTo === m.id) this.cancelReply();
    this.refreshQuotes(m.id);
  }

  /** Applies a change event (live or recovered) to the message it names. */
  private applyChange(ev: ChangeEvent): void {
    const m = this.msgs.get(ev.message_id);
    // Not on screen: history shows it changed when it is loaded.
    if (!m || m.deleted) return;
    switch (ev.type) {
      case 'message_edited':
        m.text = ev.text;
        if (!m.el.classList.contains('editing')) m.textEl.textContent = ev.text;
        m.el.classList.add('edited');
        this.refreshQuotes(m.id);
        break;
      case 'message_deleted':
        this.markDeleted(m);
        break;
      case 'reaction_added':
      case 'reaction_removed': {
        const r = m.reactions.get(ev.emoji) ?? { count: 0, me: false, others: new Set<string>() };
        const isMe = ev.user.id === this.host.me.id;
        if (ev.type === 'reaction_added') {
          if (isMe ? r.me : r.others.has(ev.user.id)) return;
          r.count += 1;
          if (isMe) r.me = true;
          else r.others.add(ev.user.id);
        } else if (isMe) {
          if (!r.me) return;
          r.me = false;
          r.count -= 1;
        } else {
          r.others.delete(ev.user.id);
          if (r.count <= (r.me ? 1 : 0)) return;
          r.count -= 1;
        }
        m.reactions.set(ev.emoji, r);
        this.renderReactions(m);
        break;
      }
    }
  }

  private async toggleReaction(m: MsgState, emoji: string): Promise<void> {
    const on = !m.reactions.get(emoji)?.me;
    try {
      await whenStored(() => this.host.api.react(this.room.id, m.id, emoji, on));
      // The live event updates the count; this covers a slow subscription.
      this.applyChange({ type: on ? 'reaction_added' : 'reaction_removed', message_id: m.id, emoji, user: this.host.me });
    } catch (err) {
      this.showSendError(`Could not react: ${describeError(err)}`);
    }
  }

  private startEdit(m: MsgState): void {
    if (m.el.classList.contains('editing') || m.deleted) return;
    m.el.classList.add('editing');
    const box = h('textarea', { class: 'edit-box', 'aria-label': 'Edit message', maxlength: String(MAX_TEXT), rows: '2' });
    box.value = m.text;
    const done = (): void => {
      m.el.classList.remove('editing');
      m.textEl.replaceChildren(m.deleted ? 'This message was deleted.' : m.text);
    };
    const save = async (): Promise<void> => {
      const text = box.value;
      if (!text.trim()) return;
      try {
        const edited = await whenStored(() => this.host.api.editMessage(this.room.id, m.id, text));
        m.text = textOf(edited.data);
        m.el.classList.add('edited');
        done();
        this.refreshQuotes(m.id);
      } catch (err) {
        this.showSendError(`Could not edit: ${describeError(err)}`);
      }
    };
    box.addEventListener('keydown', (e: KeyboardEvent) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        void save();
      } else if (e.key === 'Escape') {
        done();
      }
    });
    m.textEl.replaceChildren(
      box,
      h('div', { class: 'edit-actions' },
        h('button', { type: 'button', class: 'primary small', onclick: () => void save() }, 'Save'),
        h('button', { type: 'button', class: 'ghost small', onclick: done }, 'Cancel')),
    );
    box.focus();
  }

  private async deleteMessage(m: MsgState): Promise<void> {
    try {
      await whenStored(() => this.host.api.deleteMessage(this.room.id, m.id));
      this.markDeleted(m);
    } catch (err) {
      this.showSendError(`Could not delete: ${describeError(err)}`);
    }
  }

  private startReply(m: MsgState): void {
    this.replyingTo = m.id;
    const name = this.host.names.get(m.userId) ?? 'someone';
    this.replyBar.hidden = false;
    replace(
      this.replyBar,
      h('span', { class: 'reply-to-label' }, 'Replying to ', h('strong', null, name), ': ', m.text.length > 80 ? `${m.text.slice(0, 80)}…` : m.text),
      h('button', { type: 'button', class: 'ghost small', 'aria-label': 'Cancel reply', onclick: () => this.cancelReply() }, '✕'),
    );
    this.input.focus();
  }

  private cancelReply(): void {
    this.replyingTo = null;
    this.replyBar.hidden = true;
    this.replyBar.replaceChildren();
  }

  private noticeEl(kind: 'member_joined' | 'member_left', user: User, when: Date, ev?: MemberEvent): HTMLElement {
    this.host.names.set(user.id, user.username);
    const what =
      kind === 'member_joined'
        ? ' joined the room'
        : ev?.reason && ev.by
          ? ` was ${ev.reason} by ${ev.by.username}`
          : ' left the room';
    return h(
      'li',
      { class: ev?.reason ? `notice ${kind} ${ev.reason}` : `notice ${kind}` },
      this.host.names.span(user.id),
      what,
      ' · ',
      timeEl(when),
    );
  }

  /** Inserts an element in offset order; returns false for a duplicate offset. */
  private insert(offset: number | undefined, el: HTMLElement): boolean {
    const last = this.items.length ? this.items[this.items.length - 1].offset : -1;
    const off = typeof offset === 'number' ? offset : last;
    if (typeof offset === 'number') {
      if (this.seen.has(offset)) return false;
      this.seen.add(offset);
      el.dataset.offset = String(offset);
      if (offset > this.newestOffset) {
        this.newestOffset = offset;
        this.scheduleRead();
      }
    }
    let i = this.items.length;
    while (i > 0 && this.items[i - 1].offset > off) i--;
    const next = this.items[i]?.el ?? null;
    this.list.insertBefore(el, next);
    this.items.splice(i, 0, { offset: off, el });
    this.regroup(el);
    if (next) this.regroup(next);
    return true;
  }

  /** Consecutive messages from one sender within five minutes share one header. */
  private regroup(el: HTMLElement): void {
    if (!el.classList.contains('msg')) return;
    const prev = el.previousElementSibling as HTMLElement | null;
    const cont =
      !!prev &&
      prev.classList.contains('msg') &&
      prev.dataset.sender === el.dataset.sender &&
      Math.abs(Number(el.dataset.ts) - Number(prev.dataset.ts)) < 5 * 60_000;
    el.classList.toggle('cont', cont);
  }

  private nearBottom(): boolean {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  private scrollToBottom(): void {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  // ---- live ------------------------------------------------------------------

  private subscribe(since: number | null): void {
    const { api, client } = this.host;
    const opts: Partial<SubscriptionOptions> = {
      getToken: async () => {
        try {
          return await api.subscriptionToken(this.room.id);
        } catch (e) {
          // Not a member (any more): stop trying rather than retrying forever.
          if (e instanceof ApiError && (e.status === 401 || e.status === 403 || e.status === 404)) {
            throw new UnauthorizedError(e.message);
          }
          throw e;
        }
      },
      recoverable: true,
      positioned: true,
      joinLeave: true,
    };
    // Recover everything published after the newest message loaded over REST
    // (from the start when history was empty: e.g. a new room whose first event
    // is not persisted yet). The epoch is unknown here: an empty epoch means
    // "whatever epoch is current". If the gateway cannot recover that far, it
    // says recovered: false and onSubscribed reloads from REST.
    opts.since = { offset: since ?? 0, epoch: '' };

    const existing = client.getSubscription(this.room.channel);
    if (existing) client.removeSubscription(existing);
    const sub = client.newSubscription(this.room.channel, opts);
    this.sub = sub;

    sub.on('subscribing', (ctx) => {
      if (ctx.code !== 0) this.setOnline(new Map());
      this.setSubStatus('subscribing', ctx.code === 0 ? 'Joining…' : 'Reconnecting…');
    });
    sub.on('subscribed', (ctx) => this.onSubscribed(ctx));
    sub.on('unsubscribed', (ctx) => {
      if (this.destroyed) return;
      this.setOnline(new Map());
      if (ctx.code === 0) return;
      this.setSubStatus('error', 'Not receiving messages');
      this.showSendError(
        ctx.code === 1
          ? 'You are not a member of this room any more.'
          : `Stopped receiving messages: ${ctx.reason || 'unsubscribed by the server'}.`,
      );
    });
    sub.on('publication', (ctx) => this.onPublication(ctx));
    sub.on('join', (ctx) => this.onJoin(ctx.info));
    sub.on('leave', (ctx) => this.onClientLeave(ctx.info));
    sub.on('error', (ctx) => {
      if (this.destroyed) return;
      this.setSubStatus('error', `Subscription problem: ${ctx.error.message}`);
    });
    sub.subscribe();
  }

  private onSubscribed(ctx: SubscribedContext): void {
    if (this.destroyed) return;
    this.setSubStatus('ok', '');
    this.sendError.textContent = '';
    // For observers (and the e2e tests): how the last resubscribe caught up.
    if (ctx.wasRecovering) this.el.dataset.lastRecovery = ctx.recovered ? 'recovered' : 'rest';
    if (ctx.wasRecovering && !ctx.recovered) {
      // Missed publications are outside the gateway's window: fall back to REST
      // history, again a moment later for what the persister had not stored yet.
      void this.mergeLatest(false).catch(() => undefined);
      setTimeout(() => {
        if (!this.destroyed) void this.mergeLatest(false).catch(() => undefined);
      }, 1500);
    }
    void this.refreshPresence();
  }

  private onPublication(ctx: PublicationContext): void {
    if (this.destroyed) return;
    // Typing notices come without an offset and are never stored.
    const typist = ctx.offset === undefined || ctx.offset === null ? typingUser(ctx.data) : null;
    if (typist) {
      this.showTyping(typist);
      return;
    }
    const stick = this.nearBottom();
    const ev = memberEvent(ctx.data);
    const change = changeEvent(ctx.data);
    const now = new Date();
    let mine = false;
    if (change) {
      if (typeof ctx.offset === 'number') {
        if (this.seenChanges.has(ctx.offset)) return;
        this.seenChanges.add(ctx.offset);
      }
      this.applyChange(change);
      return;
    }
    if (ev) {
      if (this.insert(ctx.offset, this.noticeEl(ev.type, ev.user, now, ev))) this.host.onMembership();
      if (ev.type === 'member_left' && ev.user.id === this.host.me.id) {
        if (ev.reason && ev.by) {
          const what = ev.reason === 'banned' ? 'banned from' : 'removed from';
          this.host.onRemoved(this.room, `You were ${what} ${this.room.name} by ${ev.by.username}.`);
          return;
        }
        // We left (maybe from another tab); the gateway unsubscribes us too.
        this.showSendError('You left this room.');
      }
      if (ev.reason) this.refreshMembers();
    } else {
      const userId = ctx.info?.user ?? '';
      const name = usernameFromInfo(ctx.info);
      if (name) this.host.names.set(userId, name);
      else if (userId && !this.host.names.has(userId)) this.scheduleMembersRefresh();
      mine = userId === this.host.me.id;
      this.hideTyping(userId);
      const id = (ctx.tags as Record<string, string> | undefined)?.message_id ?? `live-${ctx.offset ?? Math.random()}`;
      if (!this.msgs.has(id)) {
        const state = this.messageEl(id, ctx.offset ?? 0, userId, textOf(ctx.data), now, replyToOf(ctx.data));
        if (this.insert(ctx.offset, state.el)) {
          this.msgs.set(id, state);
          this.refreshQuotes(id);
        }
      }
    }
    if (stick || mine) this.scrollToBottom();
  }

  // ---- presence --------------------------------------------------------------

  private async refreshPresence(): Promise<void> {
    if (!this.sub) return;
    try {
      const res = await this.sub.presence();
      if (this.destroyed) return;
      const online = new Map<string, Set<string>>();
      for (const [clientId, info] of Object.entries(res.clients)) {
        const name = usernameFromInfo(info);
        if (name) this.host.names.set(info.user, name);
        const set = online.get(info.user) ?? new Set<string>();
        set.add(info.client || clientId);
        online.set(info.user, set);
      }
      this.setOnline(online);
    } catch {
      // Presence is best effort; join/leave pushes still update the list.
    }
  }

  private onJoin(info: ClientInfo): void {
    const name = usernameFromInfo(info);
    if (name) this.host.names.set(info.user, name);
    else if (!this.host.names.has(info.user)) this.scheduleMembersRefresh();
    const next = new Map(this.online);
    const set = new Set(next.get(info.user) ?? []);
    set.add(info.client);
    next.set(info.user, set);
    this.setOnline(next);
  }

  private onClientLeave(info: ClientInfo): void {
    const next = new Map(this.online);
    const set = new Set(next.get(info.user) ?? []);
    set.delete(info.client);
    if (set.size) next.set(info.user, set);
    else next.delete(info.user);
    this.setOnline(next);
  }

  private setOnline(online: Map<string, Set<string>>): void {
    this.online = online;
    const ids = [...online.keys()].sort((a, b) =>
      (this.host.names.get(a) ?? a).localeCompare(this.host.names.get(b) ?? b),
    );
    this.onlineCount.textContent = String(ids.length);
    replace(
      this.onlineEl,
      ids.map((id) => h('li', { class: id === this.host.me.id ? 'me' : undefined }, this.host.names.span(id))),
    );
  }

  private scheduleMembersRefresh(): void {
    if (this.membersTimer !== null) return;
    const wait = Math.max(0, this.membersFetchedAt + 3000 - Date.now());
    this.membersTimer = window.setTimeout(() => {
      this.membersTimer = null;
      this.refreshMembers();
    }, wait);
  }

  private refreshMembers(): void {
    this.membersFetchedAt = Date.now();
    this.host.api
      .members(this.room.id)
      .then((members) => {
        if (this.destroyed) return;
        for (const m of members) this.host.names.set(m.user.id, m.user.username);
        const role = members.find((m) => m.user.id === this.host.me.id)?.role ?? null;
        if (role !== this.myRole) {
          this.myRole = role;
          for (const m of this.msgs.values()) {
            const del = m.el.querySelector<HTMLElement>('.delete-action');
            if (del) del.hidden = !this.mayDelete(m);
          }
        }
        this.renderMembers(members);
      })
      .catch(() => undefined);
  }

  /** The member list: roles, a direct message to each, and the actions the user's role allows. */
  private renderMembers(members: Member[]): void {
    const me = this.host.me.id;
    const action = (label: string, run: () => Promise<unknown>, cls = '') =>
      h(
        'button',
        {
          type: 'button',
          class: `small ${cls}`.trim(),
          onclick: async () => {
            this.membersStatus.className = 'form-status';
            this.membersStatus.textContent = '';
            try {
              await run();
              this.refreshMembers();
            } catch (err) {
              this.membersStatus.className = 'form-status error';
              this.membersStatus.textContent = describeError(err);
            }
          },
        },
        label,
      );
    replace(
      this.membersList,
      members.map((m) => {
        const self = m.user.id === me;
        const moderate = !self && !this.room.direct && mayModerate(this.myRole, m.role);
        const setRole = !self && !this.room.direct && this.myRole === 'owner' && m.role !== 'owner';
        return h(
          'li',
          { class: 'member', 'data-user-id': m.user.id, 'data-role': m.role },
          h('span', { class: 'member-name' }, m.user.username),
          ' ',
          h('span', { class: `badge role role-${m.role}` }, m.role),
          h(
            'span',
            { class: 'member-actions' },
            self ? null : action('Message', async () => this.host.openDm(m.user.username)),
            setRole
              ? m.role === 'moderator'
                ? action('Make member', () => this.host.api.setRole(this.room.id, m.user.id, 'member'))
                : action('Make moderator', () => this.host.api.setRole(this.room.id, m.user.id, 'moderator'))
              : null,
            moderate ? action('Kick', () => this.host.api.kick(this.room.id, m.user.id), 'danger') : null,
            moderate ? action('Ban', () => this.host.api.ban(this.room.id, m.user.id), 'danger') : null,
          ),
        );
      }),
    );
  }

  // ---- reads and typing ------------------------------------------------------------

  /** Marks the newest shown offset read, soon, while the page is visible. */
  private scheduleRead(): void {
    if (this.destroyed || this.readTimer !== null) return;
    this.readTimer = window.setTimeout(() => {
      this.readTimer = null;
      void this.markRead();
    }, 300);
  }

  private async markRead(): Promise<void> {
    if (this.destroyed || document.visibilityState !== 'visible') return;
    const offset = this.newestOffset;
    if (offset <= this.readSent) return;
    this.readSent = offset;
    try {
      await this.host.api.markRead(this.room.id, offset);
      this.host.onRead(this.room, offset);
      if (this.destroyed) return;
      void this.refreshReads();
    } catch {
      this.readSent = -1; // try again with the next message
    }
  }

  /** "Seen by": the other members whose read position reaches the newest message. */
  private async refreshReads(): Promise<void> {
    try {
      const reads = await this.host.api.reads(this.room.id);
      if (this.destroyed) return;
      const seen = reads
        .filter((r) => r.user.id !== this.host.me.id && this.newestOffset >= 0 && r.offset >= this.newestOffset)
        .map((r) => r.user.username)
        .sort((a, b) => a.localeCompare(b));
      this.seenByEl.hidden = seen.length === 0;
      this.seenByEl.textContent = seen.length ? `Seen by ${seen.join(', ')}` : '';
    } catch {
      // Receipts are best effort.
    }
  }

  /** Tells the room the user is typing: at most once per TYPING_EVERY_MS. */
  private onTyping(): void {
    if (!this.sub || !this.input.value.trim()) return;
    const now = Date.now();
    if (now - this.lastTypingSent < TYPING_EVERY_MS) return;
    this.lastTypingSent = now;
    this.host.client.rpc('typing', { channel: this.room.channel }).catch(() => undefined);
  }

  private showTyping(user: User): void {
    if (user.id === this.host.me.id) return;
    this.host.names.set(user.id, user.username);
    const old = this.typing.get(user.id);
    if (old) clearTimeout(old.timer);
    const timer = window.setTimeout(() => this.hideTyping(user.id), TYPING_SHOWN_MS);
    this.typing.set(user.id, { name: user.username, timer });
    this.renderTyping();
  }

  private hideTyping(userId: string): void {
    const t = this.typing.get(userId);
    if (!t) return;
    clearTimeout(t.timer);
    this.typing.delete(userId);
    this.renderTyping();
  }

  private renderTyping(): void {
    const names = [...this.typing.values()].map((t) => t.name).sort((a, b) => a.localeCompare(b));
    this.typingEl.hidden = names.length === 0;
    this.typingEl.textContent =
      names.length === 0
        ? ''
        : names.length === 1
          ? `${names[0]} is typing…`
          : `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]} are typing…`;
  }

  private setSubStatus(state: 'ok' | 'subscribing' | 'error', text: string): void {
    this.subStatus.dataset.state = state;
    this.subStatus.textContent = text;
  }

  // ---- actions -----------------------------------------------------------------

  private showSendError(text: string): void {
    this.sendError.textContent = text;
  }

  /** Grows the send box with its text, up to the CSS max-height. */
  private autosize(): void {
    this.input.style.height = 'auto';
    this.input.style.height = `${this.input.scrollHeight + 2}px`;
  }

  private async onSend(e: Event): Promise<void> {
    e.preventDefault();
    const text = this.input.value;
    if (!text.trim()) return;
    if (text.length > MAX_TEXT) {
      this.showSendError(`Messages can be at most ${MAX_TEXT} characters.`);
      return;
    }
    if (!this.sub) return;
    this.input.value = '';
    this.autosize();
    this.sendError.textContent = '';
    const replyTo = this.replyingTo;
    this.cancelReply();
    try {
      await this.sub.publish(replyTo ? { text, reply_to: replyTo } : { text });
    } catch (err) {
      if (!this.input.value) this.input.value = text;
      const { code, message } = (err ?? {}) as { code?: number; message?: string };
      this.showSendError(
        code === 111
          ? 'Message not sent: you are sending too fast. Wait a moment and try again.'
          : code === 106
            ? 'Message not sent: it is too long.'
            : code === 107
              ? 'Message not sent: the server refused it.'
              : `Message not sent (${message ?? String(err)}). Check your connection and try again.`,
      );
    }
  }

  private async onInvite(e: Event): Promise<void> {
    e.preventDefault();
    const form = e.target as HTMLFormElement;
    const username = field(form, 'username').trim();
    if (!username) return;
    this.inviteStatus.className = 'form-status';
    this.inviteStatus.textContent = 'Inviting…';
    try {
      await this.host.api.invite(this.room.id, username);
      this.inviteStatus.textContent = `Invited ${username}. They can now join this room.`;
      form.reset();
    } catch (err) {
      this.inviteStatus.className = 'form-status error';
      this.inviteStatus.textContent =
        err instanceof ApiError && err.status === 404 ? `No user named ${username}.` : describeError(err);
    }
  }

  private async onLeave(): Promise<void> {
    try {
      await this.host.api.leave(this.room.id);
      this.host.onLeft(this.room);
    } catch (err) {
      this.showSendError(`Could not leave: ${describeError(err)}`);
    }
  }
}

export function roomBadge(room: Room): HTMLSpanElement {
  if (room.direct) return h('span', { class: 'badge direct', title: 'Direct message' }, 'direct');
  if (room.visibility === 'public') return h('span', { class: 'badge public' }, 'public');
  if (room.requires_password) return h('span', { class: 'badge password', title: 'Private, password required' }, 'password');
  return h('span', { class: 'badge invite', title: 'Private, invite only' }, 'invite-only');
}
