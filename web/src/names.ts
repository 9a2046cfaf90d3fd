// A shared user-id → username book. Live publications carry only the sender's
// user id (`info.user`), so names come from REST history, membership events,
// the members list and connection info, and every rendered name updates in place
// when it becomes known.

import { h } from './dom';

export class Names {
  private byId = new Map<string, string>();

  get(id: string): string | undefined {
    return this.byId.get(id);
  }

  has(id: string): boolean {
    return this.byId.has(id);
  }

  set(id: string, username: string): void {
    if (!id || !username || this.byId.get(id) === username) return;
    this.byId.set(id, username);
    for (const el of document.querySelectorAll<HTMLElement>('[data-user-id]')) {
      if (el.dataset.userId === id) el.textContent = username;
    }
  }

  /** A span showing the user's name, kept current as names are learnt. */
  span(id: string, cls = 'uname'): HTMLSpanElement {
    return h('span', { class: cls, 'data-user-id': id }, this.byId.get(id) ?? fallbackName(id));
  }
}

export function fallbackName(id: string): string {
  return id ? `user ${id.slice(0, 8)}` : 'unknown user';
}

/** Picks a username out of centrifuge connection or channel info, if the gateway sends one. */
export function usernameFromInfo(info: { connInfo?: unknown; chanInfo?: unknown } | undefined): string | undefined {
  for (const v of [info?.connInfo, info?.chanInfo]) {
    if (v && typeof v === 'object') {
      const o = v as Record<string, unknown>;
      if (typeof o.username === 'string') return o.username;
      if (typeof o.name === 'string') return o.name;
    }
  }
  return undefined;
}
