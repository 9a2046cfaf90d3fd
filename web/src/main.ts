// Confab web client: accounts, the room list, creating and joining rooms, and
// the chat view (room.ts). Routes are hashes: `#/` and `#/room/<id>`.

import { Centrifuge, UnauthorizedError } from 'centrifuge';
import { Api, ApiError, describeError, type Room, type Session } from './api';
import { wsUrl } from './config';
import { field, h, replace } from './dom';
import { Names } from './names';
import { RoomView, roomBadge } from './room';

const SESSION_KEY = 'confab.session';
/** Rooms per page of the room list (the API's default). */
const ROOM_PAGE = 50;
/** How often the room list (and its unread counts) is reloaded while logged in. */
const ROOMS_POLL_MS = 3000;
const UUID_RE = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/i;

function expiryMs(expiresAt: Session['expires_at']): number | null {
  if (expiresAt === null || expiresAt === undefined) return null;
  if (typeof expiresAt === 'number') return expiresAt < 1e12 ? expiresAt * 1000 : expiresAt;
  const n = Number(expiresAt);
  if (Number.isFinite(n)) return n < 1e12 ? n * 1000 : n;
  const t = Date.parse(expiresAt);
  return Number.isNaN(t) ? null : t;
}

function loadSession(): Session | null {
  try {
    const raw = sessionStorage.getItem(SESSION_KEY);
    if (!raw) return null;
    const s = JSON.parse(raw) as Session;
    const exp = expiryMs(s.expires_at);
    if (!s.token || !s.user || (exp !== null && exp <= Date.now())) return null;
    return s;
  } catch {
    return null;
  }
}

function saveSession(s: Session | null): void {
  try {
    if (s) sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
    else sessionStorage.removeItem(SESSION_KEY);
  } catch {
    /* storage unavailable: the session lives in memory only */
  }
}

type ConnState = 'connecting' | 'connected' | 'disconnected';

class App {
  private readonly api = new Api();
  private readonly names = new Names();
  private readonly root: HTMLElement;
  private session: Session | null = null;
  private client: Centrifuge | null = null;
  private everConnected = false;
  private rooms: Room[] = [];
  /** The cursor of the next page of the room list; null once every page is loaded. */
  private roomsNextAfter: string | null = null;
  /** How many pages of the room list are loaded (a refresh reloads as many). */
  private roomPages = 1;
  private moreRooms: HTMLButtonElement | null = null;
  private roomFilter = '';
  private view: RoomView | null = null;
  /** The room id the current route points at (a view may still be loading). */
  private routeRoomId: string | null = null;

  // Shell elements (exist while logged in).
  private shell: HTMLDivElement | null = null;
  private banner: HTMLDivElement | null = null;
  private connDot: HTMLSpanElement | null = null;
  private roomList: HTMLUListElement | null = null;
  private dmList: HTMLUListElement | null = null;
  private roomsPoll: number | null = null;
  /** Shown on the welcome page once: why the user is no longer in a room. */
  private notice: string | null = null;
  private roomListStatus: HTMLParagraphElement | null = null;
  private content: HTMLElement | null = null;

  constructor(root: HTMLElement) {
    this.root = root;
    this.api.onUnauthorized = () => this.logout('Your session has expired. Please log in again.');
    window.addEventListener('hashchange', () => void this.route());
  }

  async start(): Promise<void> {
    const s = loadSession();
    if (!s) {
      this.showAuth();
      return;
    }
    this.api.token = s.token;
    try {
      const me = await this.api.me();
      this.enter({ ...s, user: me });
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return; // onUnauthorized showed the login form
      // Server unreachable: keep the session and try anyway; errors show in place.
      this.enter(s);
    }
  }

  // ---- accounts -----------------------------------------------------------------

  private showAuth(notice?: string, mode: 'login' | 'register' = 'login'): void {
    this.shell = null;
    const error = h('p', { class: 'error', role: 'alert' }, notice ?? '');
    const isRegister = mode === 'register';
    const form = h(
      'form',
      { class: 'auth-form', novalidate: true, onsubmit: (e: Event) => void submit(e) },
      h('h2', null, isRegister ? 'Create an account' : 'Log in'),
      h('label', { for: 'auth-username' }, 'Username'),
      h('input', {
        id: 'auth-username',
        name: 'username',
        autocomplete: 'username',
        required: true,
        autocapitalize: 'off',
        spellcheck: 'false',
        minlength: isRegister ? '3' : undefined,
        maxlength: '32',
      }),
      isRegister ? h('p', { class: 'hint' }, '3–32 letters, digits, _ . or -') : null,
      h('label', { for: 'auth-password' }, 'Password'),
      h('input', {
        id: 'auth-password',
        name: 'password',
        type: 'password',
        autocomplete: isRegister ? 'new-password' : 'current-password',
        required: true,
      }),
      isRegister ? h('p', { class: 'hint' }, 'At least 8 characters') : null,
      error,
      h('button', { type: 'submit', class: 'primary wide' }, isRegister ? 'Create account' : 'Log in'),
      h(
        'p',
        { class: 'switch' },
        isRegister ? 'Already have an account? ' : 'New here? ',
        h(
          'button',
          { type: 'button', class: 'link', onclick: () => this.showAuth(undefined, isRegister ? 'login' : 'register') },
          isRegister ? 'Log in' : 'Create an account',
        ),
      ),
    );
    const submit = async (e: Event) => {
      e.preventDefault();
      const username = field(form, 'username').trim();
      const password = field(form, 'password');
      if (isRegister) {
        if (!/^[A-Za-z0-9_.-]{3,32}$/.test(username)) {
          error.textContent = 'Usernames are 3–32 characters: letters, digits, _ . or -.';
          return;
        }
        if (password.length < 8) {
          error.textContent = 'Passwords need at least 8 characters.';
          return;
        }
      } else if (!username || !password) {
        error.textContent = 'Enter your username and password.';
        return;
      }
      error.textContent = '';
      const button = form.querySelector<HTMLButtonElement>('button[type=submit]');
      if (button) button.disabled = true;
      try {
        const s = isRegister ? await this.api.register(username, password) : await this.api.login(username, password);
        this.enter(s);
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) error.textContent = 'Wrong username or password.';
        else if (err instanceof ApiError && err.status === 409) error.textContent = 'That username is taken. Pick another one.';
        else error.textContent = describeError(err);
        if (button) button.disabled = false;
      }
    };
    replace(
      this.root,
      h(
        'main',
        { class: 'auth' },
        h('h1', { class: 'brand-big' }, 'Confab'),
        h('p', { class: 'tagline' }, 'Real-time chat rooms'),
        form,
      ),
    );
    form.querySelector<HTMLInputElement>('#auth-username')?.focus();
  }

  private enter(s: Session): void {
    this.session = s;
    this.api.token = s.token;
    saveSession(s);
    this.names.set(s.user.id, s.user.username);
    this.connect();
    this.showShell();
    void this.refreshRooms();
    void this.route();
    if (this.roomsPoll === null) {
      this.roomsPoll = window.setInterval(() => {
        if (this.session && document.visibilityState === 'visible') void this.refreshRooms();
      }, ROOMS_POLL_MS);
    }
  }

  private logout(notice?: string): void {
    if (!this.session) {
      // A stored session the API refused before the app was entered.
      this.api.token = null;
      saveSession(null);
      this.showAuth(notice);
      return;
    }
    this.session = null;
    this.api.token = null;
    saveSession(null);
    this.closeRoom();
    if (this.roomsPoll !== null) {
      clearInterval(this.roomsPoll);
      this.roomsPoll = null;
    }
    if (this.client) {
      this.client.removeAllListeners();
      this.client.disconnect();
      this.client = null;
    }
    this.everConnected = false;
    this.rooms = [];
    this.roomsNextAfter = null;
    this.roomPages = 1;
    this.roomFilter = '';
    if (location.hash) history.replaceState(null, '', location.pathname + location.search);
    this.showAuth(notice);
  }

  // ---- connection --------------------------------------------------------------

  private connect(): void {
    const client = new Centrifuge(wsUrl(), {
      name: 'confab-web',
      getToken: async () => {
        const s = this.session;
        if (!s) throw new UnauthorizedError('logged out');
        const exp = expiryMs(s.expires_at);
        if (exp !== null && exp <= Date.now()) throw new UnauthorizedError('token expired');
        return s.token;
      },
    });
    client.on('connecting', (ctx) => {
      this.setConn('connecting');
      if (this.everConnected) this.showBanner('Connection lost. Reconnecting…', 'warn');
      else if (ctx.code !== 0) this.showBanner('Cannot reach the chat server. Retrying…', 'warn');
    });
    client.on('error', (ctx) => {
      // Transport failures while (re)connecting: the state stays "connecting",
      // so say here that the server cannot be reached.
      if (ctx.type === 'transport' && client.state !== 'connected') {
        this.showBanner(
          this.everConnected ? 'Connection lost. Reconnecting…' : 'Cannot reach the chat server. Retrying…',
          'warn',
        );
      }
    });
    client.on('connected', () => {
      this.everConnected = true;
      this.setConn('connected');
      this.hideBanner();
    });
    client.on('disconnected', (ctx) => {
      this.setConn('disconnected');
      if (!this.session) return;
      if (ctx.code === 1 || ctx.code === 3500 || ctx.code === 109) {
        this.logout('Your session has expired. Please log in again.');
        return;
      }
      if (ctx.code === 0) return;
      this.showBanner(`Disconnected from the chat server: ${ctx.reason || 'unknown reason'}.`, 'error', true);
    });
    this.client = client;
    client.connect();
  }

  private setConn(state: ConnState): void {
    if (!this.connDot) return;
    this.connDot.dataset.state = state;
    const label = state === 'connected' ? 'Online' : state === 'connecting' ? 'Connecting…' : 'Offline';
    this.connDot.title = label;
    this.connDot.setAttribute('aria-label', `Connection: ${label}`);
  }

  private showBanner(text: string, kind: 'warn' | 'error', reconnect = false): void {
    if (!this.banner) return;
    this.banner.hidden = false;
    this.banner.className = `banner ${kind}`;
    replace(
      this.banner,
      h('span', null, text),
      reconnect
        ? h('button', { type: 'button', class: 'ghost', onclick: () => this.client?.connect() }, 'Reconnect')
        : null,
    );
  }

  private hideBanner(): void {
    if (!this.banner) return;
    this.banner.hidden = true;
    this.banner.replaceChildren();
  }

  // ---- shell and room list --------------------------------------------------------

  private showShell(): void {
    const s = this.session!;
    this.connDot = h('span', { class: 'conn-dot', role: 'img', 'data-state': 'connecting', 'aria-label': 'Connection: connecting' });
    this.banner = h('div', { class: 'banner', role: 'alert', hidden: true });
    this.roomList = h('ul', { class: 'room-list', 'aria-label': 'Room list' });
    this.dmList = h('ul', { class: 'room-list dm-list', 'aria-label': 'Direct messages' });
    this.roomListStatus = h('p', { class: 'muted', role: 'status' }, 'Loading rooms…');
    this.moreRooms = h(
      'button',
      { type: 'button', class: 'ghost small more-rooms', hidden: true, onclick: () => void this.loadMoreRooms() },
      'Load more rooms',
    ) as HTMLButtonElement;
    this.content = h('main', { class: 'content', id: 'content' });
    this.shell = h(
      'div',
      { class: 'shell' },
      h(
        'header',
        { class: 'topbar' },
        h('a', { class: 'brand', href: '#/' }, 'Confab'),
        this.connDot,
        h('span', { class: 'spacer' }),
        h('span', { class: 'whoami' }, h('span', { class: 'whoami-prefix' }, 'Signed in as '), h('strong', { class: 'me-name' }, s.user.username)),
        h('button', { type: 'button', class: 'ghost', onclick: () => this.logout() }, 'Log out'),
      ),
      this.banner,
      h(
        'div',
        { class: 'layout' },
        h(
          'nav',
          { class: 'sidebar', 'aria-label': 'Rooms' },
          h(
            'div',
            { class: 'sidebar-head' },
            h('h2', null, 'Rooms'),
            h('button', { type: 'button', class: 'ghost small', onclick: () => void this.refreshRooms() }, 'Refresh'),
          ),
          this.searchForm(),
          this.createRoomForm(),
          this.joinByIdForm(),
          h('h3', { class: 'list-title' }, 'Your rooms and public rooms'),
          h('input', {
            type: 'search',
            class: 'room-filter',
            placeholder: 'Filter rooms',
            'aria-label': 'Filter rooms',
            autocomplete: 'off',
            oninput: (e: Event) => {
              this.roomFilter = (e.target as HTMLInputElement).value.trim().toLowerCase();
              this.renderRooms();
            },
          }),
          this.roomList,
          this.roomListStatus,
          this.moreRooms,
          h('h3', { class: 'list-title' }, 'Direct messages'),
          this.dmList,
        ),
        this.content,
      ),
    );
    replace(this.root, this.shell);
  }

  private roomsTimer: number | null = null;

  /** Full-text search over the user's rooms; results open the room at the message. */
  private searchForm(): HTMLElement {
    return h(
      'form',
      {
        class: 'search-form',
        role: 'search',
        onsubmit: (e: Event) => {
          e.preventDefault();
          const q = field(e.target as HTMLFormElement, 'q').trim();
          if (q) void this.showSearch(q);
        },
      },
      h('input', { type: 'search', name: 'q', placeholder: 'Search messages', 'aria-label': 'Search messages', autocomplete: 'off', maxlength: '256' }),
      h('button', { type: 'submit', class: 'small' }, 'Search'),
    );
  }

  private async showSearch(q: string, before: string | null = null, list?: HTMLOListElement): Promise<void> {
    if (!this.content) return;
    if (!list) {
      this.closeRoom();
      // Leave the room's address without opening anything, so a result in the
      // same room opens it again.
      history.replaceState(null, '', `${location.pathname}${location.search}#/`);
      this.routeRoomId = null;
      this.shell?.classList.add('room-open');
      list = h('ol', { class: 'search-results', 'aria-label': 'Search results' });
      replace(
        this.content,
        h('section', { class: 'search pad' }, h('h2', null, 'Messages matching ', h('q', null, q)), list),
      );
    }
    const target = list;
    target.querySelector('.more-results')?.remove();
    try {
      const page = await this.api.search(q, null, before);
      if (!page.messages.length && !before) {
        target.append(h('li', { class: 'muted' }, 'No messages found.'));
      }
      for (const m of page.messages) {
        const room = this.rooms.find((r) => r.id === m.room_id);
        const text = m.data && typeof m.data === 'object' ? String((m.data as { text?: unknown }).text ?? '') : '';
        target.append(
          h('li', null,
            h('a', { class: 'search-result', href: `#/room/${m.room_id}/m/${m.id}` },
              h('span', { class: 'result-meta' }, room ? room.name : 'a room', ' · ', m.user.username, ' · ', new Date(m.created_at).toLocaleString()),
              h('span', { class: 'result-text' }, text))),
        );
      }
      if (page.next_before) {
        const next = page.next_before;
        target.append(
          h('li', { class: 'more-results' },
            h('button', { type: 'button', class: 'ghost', onclick: () => void this.showSearch(q, next, target) }, 'More results')),
        );
      }
    } catch (e) {
      target.append(h('li', { class: 'error' }, `Search failed: ${describeError(e)}`));
    }
  }

  private scheduleRoomsRefresh(): void {
    if (this.roomsTimer !== null) return;
    this.roomsTimer = window.setTimeout(() => {
      this.roomsTimer = null;
      if (this.session) void this.refreshRooms();
    }, 1000);
  }

  /** Reloads the room list: every room of the caller's (however many
   * public rooms come before them), and as many pages of all visible rooms
   * as were loaded before. */
  private async refreshRooms(): Promise<void> {
    try {
      const rooms = new Map<string, Room>();
      let after: string | null = null;
      do {
        const page = await this.api.roomsPage(ROOM_PAGE, after, true);
        for (const r of page.rooms) rooms.set(r.id, r);
        after = page.next_after;
      } while (after);
      let pages = 0;
      do {
        const page = await this.api.roomsPage(ROOM_PAGE, after);
        for (const r of page.rooms) if (!rooms.has(r.id)) rooms.set(r.id, r);
        after = page.next_after;
        pages += 1;
      } while (after && pages < this.roomPages);
      this.rooms = [...rooms.values()];
      this.roomsNextAfter = after;
      this.roomPages = pages;
      this.renderRooms();
    } catch (e) {
      if (this.roomListStatus) this.roomListStatus.textContent = `Could not load rooms: ${describeError(e)}`;
    }
  }

  /** Appends the next page of the room list. */
  private async loadMoreRooms(): Promise<void> {
    if (!this.roomsNextAfter || !this.moreRooms) return;
    this.moreRooms.disabled = true;
    try {
      const page = await this.api.roomsPage(ROOM_PAGE, this.roomsNextAfter);
      const known = new Set(this.rooms.map((r) => r.id));
      this.rooms = [...this.rooms, ...page.rooms.filter((r) => !known.has(r.id))];
      this.roomsNextAfter = page.next_after;
      this.roomPages += 1;
      this.renderRooms();
    } catch (e) {
      if (this.roomListStatus) this.roomListStatus.textContent = `Could not load rooms: ${describeError(e)}`;
    } finally {
      this.moreRooms.disabled = false;
    }
  }

  private renderRooms(): void {
    if (!this.roomList || !this.roomListStatus) return;
    if (this.moreRooms) this.moreRooms.hidden = this.roomsNextAfter === null;
    const all = this.rooms.filter((r) => !r.direct).length;
    const matches = (r: Room) => !this.roomFilter || r.name.toLowerCase().includes(this.roomFilter);
    if (this.dmList) {
      const dms = this.rooms
        .filter((r) => r.direct && r.is_member && matches(r))
        .sort((a, b) => a.name.localeCompare(b.name));
      replace(this.dmList, dms.map((r) => this.roomItem(r)));
    }
    const rooms = this.rooms
      .filter((r) => !r.direct && matches(r))
      .sort(
      (a, b) => Number(b.is_member) - Number(a.is_member) || a.name.localeCompare(b.name),
    );
    this.roomListStatus.textContent = rooms.length
      ? ''
      : all
        ? 'No room matches the filter.'
        : 'No rooms yet. Create one above.';
    replace(this.roomList, rooms.map((r) => this.roomItem(r)));
  }

  private roomItem(r: Room): HTMLLIElement {
    const open = r.id === this.routeRoomId;
    const unread = r.is_member && !open ? r.unread_count : 0;
    return h(
      'li',
      null,
      h(
        'a',
        {
          href: `#/room/${r.id}`,
          class: open ? 'room-link active' : 'room-link',
          'aria-current': open ? 'page' : undefined,
          'data-room-id': r.id,
        },
        h('span', { class: 'room-name' }, r.name),
        unread > 0
          ? h('span', { class: 'badge unread', 'data-unread': String(unread), title: `${unread} unread` }, unread > 99 ? '99+' : String(unread))
          : null,
        h(
          'span',
          { class: 'room-meta' },
          roomBadge(r),
          r.is_member && !r.direct ? h('span', { class: 'badge member' }, 'joined') : null,
          r.my_role && r.my_role !== 'member' ? h('span', { class: `badge role role-${r.my_role}` }, r.my_role) : null,
          r.direct ? null : h('span', { class: 'count', title: 'Members' }, `${r.member_count} ${r.member_count === 1 ? 'member' : 'members'}`),
        ),
      ),
    );
  }

  /** Opens the direct room with `username`, creating it on first use. */
  private async openDm(username: string): Promise<void> {
    try {
      const room = await this.api.openDm(username);
      this.rooms = [...this.rooms.filter((r) => r.id !== room.id), room];
      this.renderRooms();
      location.hash = `#/room/${room.id}`;
    } catch (e) {
      this.showBanner(`Could not open a conversation with ${username}: ${describeError(e)}`, 'error');
    }
  }

  private createRoomForm(): HTMLElement {
    const error = h('p', { class: 'error', role: 'alert' });
    const password = h('input', {
      id: 'new-room-password',
      name: 'password',
      type: 'password',
      autocomplete: 'new-password',
      placeholder: 'Room password',
      'aria-label': 'Room password',
    });
    const passwordRow = h('div', { class: 'password-row', hidden: true }, password);
    const radio = (value: string, label: string, checked = false) =>
      h(
        'label',
        { class: 'radio' },
        h('input', {
          type: 'radio',
          name: 'kind',
          value,
          checked,
          onchange: () => {
            passwordRow.hidden = value !== 'password';
            if (value === 'password') password.focus();
          },
        }),
        ' ',
        label,
      );
    const form = h(
      'form',
      {
        class: 'create-room',
        onsubmit: async (e: Event) => {
          e.preventDefault();
          const name = field(form, 'name').trim();
          const kind = (form.querySelector<HTMLInputElement>('input[name=kind]:checked')?.value ?? 'public') as
            | 'public'
            | 'password'
            | 'invite';
          const pw = password.value;
          if (!name) {
            error.textContent = 'Give the room a name.';
            return;
          }
          if (kind === 'password' && !pw) {
            error.textContent = 'Enter a password for the room.';
            password.focus();
            return;
          }
          error.textContent = '';
          try {
            const room = await this.api.createRoom(name, kind === 'public' ? 'public' : 'private', kind === 'password' ? pw : undefined);
            form.reset();
            passwordRow.hidden = true;
            (form.closest('details') as HTMLDetailsElement | null)?.removeAttribute('open');
            this.rooms = [...this.rooms.filter((r) => r.id !== room.id), room];
            this.renderRooms();
            location.hash = `#/room/${room.id}`;
          } catch (err) {
            error.textContent = describeError(err);
          }
        },
      },
      h('label', { for: 'new-room-name' }, 'Name'),
      h('input', { id: 'new-room-name', name: 'name', required: true, maxlength: '100', autocomplete: 'off' }),
      h(
        'fieldset',
        null,
        h('legend', null, 'Who can join'),
        radio('public', 'Public: anyone', true),
        radio('password', 'Private, with a password'),
        radio('invite', 'Private, invite only'),
      ),
      passwordRow,
      error,
      h('button', { type: 'submit', class: 'primary' }, 'Create room'),
    );
    return h('details', { class: 'panel' }, h('summary', null, 'New room'), form);
  }

  private joinByIdForm(): HTMLElement {
    const error = h('p', { class: 'error', role: 'alert' });
    const form = h(
      'form',
      {
        class: 'inline-form join-by-id',
        onsubmit: (e: Event) => {
          e.preventDefault();
          const m = UUID_RE.exec(field(form, 'room'));
          if (!m) {
            error.textContent = 'Paste a room ID (or a link containing one).';
            return;
          }
          error.textContent = '';
          form.reset();
          location.hash = `#/room/${m[0].toLowerCase()}`;
        },
      },
      h('label', { for: 'join-room-id', class: 'sr-only' }, 'Room ID or link'),
      h('input', { id: 'join-room-id', name: 'room', placeholder: 'Room ID or link', autocomplete: 'off' }),
      h('button', { type: 'submit' }, 'Open'),
    );
    return h('div', { class: 'panel join-by-id-panel' }, h('h3', null, 'Join by ID'), form, error);
  }

  // ---- routing ---------------------------------------------------------------------

  private async route(): Promise<void> {
    if (!this.session || !this.content) return;
    const m = /^#\/room\/([^/?#]+)(?:\/m\/([^/?#]+))?/.exec(location.hash);
    const id = m ? decodeURIComponent(m[1]) : null;
    const jump = m?.[2] ? decodeURIComponent(m[2]) : null;
    this.routeRoomId = id;
    this.shell?.classList.toggle('room-open', id !== null);
    this.renderRooms();
    if (!id) {
      this.closeRoom();
      const notice = this.notice;
      this.notice = null;
      replace(
        this.content,
        h(
          'div',
          { class: 'welcome' },
          notice ? h('p', { class: 'removed-notice', role: 'alert' }, notice) : null,
          h('h2', null, `Welcome, ${this.session.user.username}`),
          h('p', null, 'Pick a room from the list, create a new one, or open a room by its ID.'),
        ),
      );
      return;
    }
    if (this.view?.room.id === id) {
      if (jump) void this.view.jumpTo(jump);
      return;
    }
    this.closeRoom();
    replace(this.content, h('p', { class: 'muted pad' }, 'Opening room…'));
    let room: Room | null = null;
    try {
      room = await this.api.room(id);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) {
        if (this.routeRoomId === id) this.showRoomError(describeError(e));
        return;
      }
    }
    if (this.routeRoomId !== id) return; // navigated away meanwhile
    if (room?.is_member) this.openRoom(room, jump);
    else this.showJoin(id, room);
  }

  private closeRoom(): void {
    this.view?.destroy();
    this.view = null;
  }

  private openRoom(room: Room, jump: string | null = null): void {
    if (!this.client || !this.session || !this.content) return;
    this.closeRoom();
    const view = new RoomView(
      {
        api: this.api,
        me: this.session.user,
        client: this.client,
        names: this.names,
        onLeft: (r) => {
          this.closeRoom();
          this.rooms = this.rooms
            .filter((x) => x.visibility === 'public' || x.id !== r.id)
            .map((x) => (x.id === r.id ? { ...x, is_member: false, member_count: Math.max(0, x.member_count - 1) } : x));
          location.hash = '#/';
          void this.refreshRooms();
        },
        onBack: () => {
          location.hash = '#/';
        },
        onMembership: () => this.scheduleRoomsRefresh(),
        onRead: (r, offset) => {
          this.rooms = this.rooms.map((x) =>
            x.id === r.id ? { ...x, unread_count: 0, last_read_offset: Math.max(offset, x.last_read_offset ?? offset) } : x,
          );
          this.renderRooms();
        },
        openDm: (username) => void this.openDm(username),
        onRemoved: (r, text) => {
          this.closeRoom();
          this.rooms = this.rooms
            .filter((x) => x.visibility === 'public' || x.id !== r.id)
            .map((x) => (x.id === r.id ? { ...x, is_member: false, my_role: null, unread_count: 0 } : x));
          this.notice = text;
          if (location.hash === '#/' || location.hash === '') void this.route();
          else location.hash = '#/';
          void this.refreshRooms();
        },
      },
      room,
    );
    this.view = view;
    replace(this.content, view.el);
    void view.start(jump);
    view.focus();
  }

  private showRoomError(text: string): void {
    if (!this.content) return;
    replace(
      this.content,
      h(
        'div',
        { class: 'join-panel' },
        h('p', { class: 'error', role: 'alert' }, text),
        h('a', { href: '#/' }, 'Back to rooms'),
      ),
    );
  }

  /** Join form for a room the user is not a member of. `room` is null when the
   * room is not visible to the user (a private room they were not invited to). */
  private showJoin(id: string, room: Room | null): void {
    if (!this.content) return;
    const error = h('p', { class: 'error', role: 'alert' });
    const needsPassword = room ? room.requires_password : true;
    const description = !room
      ? 'This room is private. If it has a password, enter it to join.'
      : room.visibility === 'public'
        ? 'This is a public room. Anyone can join.'
        : room.requires_password
          ? 'This room is private and needs a password.'
          : 'This room is invite-only. You can join if a member invited you.';
    const password = needsPassword
      ? h('input', {
          id: 'join-password',
          name: 'password',
          type: 'password',
          autocomplete: 'off',
          required: !!room,
          placeholder: 'Room password',
        })
      : null;
    const button = h('button', { type: 'submit', class: 'primary' }, 'Join room');
    const form = h(
      'form',
      {
        class: 'join-form',
        onsubmit: async (e: Event) => {
          e.preventDefault();
          const pw = password?.value ?? '';
          if (room?.requires_password && !pw) {
            error.textContent = 'Enter the room password.';
            password?.focus();
            return;
          }
          error.textContent = '';
          button.disabled = true;
          try {
            const joined = await this.api.join(id, pw || undefined);
            this.rooms = [...this.rooms.filter((r) => r.id !== joined.id), joined];
            this.renderRooms();
            if (this.routeRoomId === id) this.openRoom({ ...joined, is_member: true });
            void this.refreshRooms();
          } catch (err) {
            button.disabled = false;
            if (err instanceof ApiError && err.code === 'wrong_password') {
              error.textContent = pw ? 'Wrong password. Check it and try again.' : 'This room needs a password.';
              password?.select();
              password?.focus();
            } else if (err instanceof ApiError && (err.code === 'banned' || err.code === 'direct_room')) {
              error.textContent = describeError(err);
            } else if (err instanceof ApiError && err.code === 'invite_required') {
              error.textContent = 'This room is invite-only. Ask a member to invite you, then try again.';
            } else if (err instanceof ApiError && err.status === 404) {
              error.textContent = 'No room with this ID, or it is private and you were not invited.';
            } else {
              error.textContent = describeError(err);
            }
          }
        },
      },
      password ? h('label', { for: 'join-password' }, 'Password') : null,
      password,
      error,
      button,
    );
    replace(
      this.content,
      h(
        'section',
        { class: 'join-panel', 'aria-labelledby': 'join-title' },
        h('button', { class: 'back ghost', type: 'button', 'aria-label': 'Back to rooms', onclick: () => (location.hash = '#/') }, '← Rooms'),
        h('h2', { id: 'join-title' }, room ? room.name : 'Join a room'),
        room ? roomBadge(room) : null,
        h('p', null, description),
        h('p', { class: 'hint' }, 'Room ID: ', h('code', null, id)),
        form,
      ),
    );
    (password ?? button).focus();
  }
}

const root = document.getElementById('app');
if (root) void new App(root).start();
