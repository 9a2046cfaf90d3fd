// Where the gateway's WebSocket lives. auth-api serves this page and the REST API
// on one origin, but the gateway listens on its own port, so the URL comes from
// (first match wins):
//   1. the `?ws=` query parameter (remembered for the browser tab in sessionStorage),
//   2. `window.CONFAB_WS_URL`, if a deployment injects it,
//   3. ws(s)://<this page's hostname>:8000/connection/websocket.

const WS_KEY = 'confab.ws_url';

declare global {
  interface Window {
    CONFAB_WS_URL?: string;
  }
}

export function wsUrl(): string {
  const fromQuery = new URLSearchParams(location.search).get('ws');
  if (fromQuery) {
    try {
      sessionStorage.setItem(WS_KEY, fromQuery);
    } catch {
      /* storage may be unavailable */
    }
    return fromQuery;
  }
  if (typeof window.CONFAB_WS_URL === 'string' && window.CONFAB_WS_URL) return window.CONFAB_WS_URL;
  try {
    const stored = sessionStorage.getItem(WS_KEY);
    if (stored) return stored;
  } catch {
    /* ignore */
  }
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.hostname}:8000/connection/websocket`;
}
