// Shared helpers of the web client's end-to-end tests.

import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, '..', '..');
export const artifacts = join(here, 'artifacts');

/** KEY=value pairs of the repository's .dev/env (written by `ops/dev up`), if any. */
export function devEnv() {
  const env = {};
  const file = join(repoRoot, '.dev', 'env');
  if (existsSync(file)) {
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      const m = /^\s*(?:export\s+)?([A-Z0-9_]+)=(.*)$/.exec(line);
      if (m) env[m[1]] = m[2].trim().replace(/^(['"])(.*)\1$/, '$2');
    }
  }
  return env;
}

/** A setting from the process environment, else .dev/env, else the default. */
export function setting(key, fallback) {
  return process.env[key] || devEnv()[key] || fallback;
}

export const API = setting('CONFAB_API_URL', 'http://127.0.0.1:8080').replace(/\/+$/, '');
export const WS = setting('CONFAB_WS_URL', 'ws://127.0.0.1:8000/connection/websocket');
export const CHROMIUM = process.env.CONFAB_CHROMIUM || '/usr/bin/chromium';
export const APP_URL = appUrl(WS);
export const PASSWORD = 'correct-horse-42';
export const WAIT = 20_000;

export function appUrl(ws) {
  return `${API}/?ws=${encodeURIComponent(ws)}`;
}

/** Fails with a clear message unless the stack serves the web client. */
export async function checkStack() {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium`);
  let res;
  try {
    res = await fetch(`${API}/`);
  } catch (e) {
    assert.fail(`the stack is not running at ${API} (${e.cause?.code ?? e.message}); start it with ops/dev up -d`);
  }
  const html = await res.text();
  assert.ok(
    res.ok && html.includes('<div id="app"'),
    `${API}/ does not serve the web client (status ${res.status}); build it with npm --prefix web run build, then restart auth-api`,
  );
}

export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

export async function shot(page, name) {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: false });
}

function escapeRe(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The message bubble whose text is exactly `text`. */
export function msg(page, text) {
  return page.locator('.messages li.msg').filter({ has: page.locator('.text', { hasText: new RegExp(`^${escapeRe(text)}$`) }) });
}

/** Registers through the UI (the password typed and submitted with the keyboard). */
export async function register(page, username, url = APP_URL) {
  await page.goto(url);
  await page.getByRole('button', { name: 'Create an account' }).click();
  await page.getByLabel('Username').fill(username);
  await page.keyboard.press('Tab');
  await page.keyboard.type(PASSWORD);
  await page.keyboard.press('Enter');
  await page.locator('.me-name', { hasText: username }).waitFor({ state: 'attached', timeout: WAIT });
}

export async function send(page, text) {
  const box = page.getByRole('textbox', { name: 'Message' });
  await box.fill(text);
  await box.press('Enter');
}

/** Offsets rendered in the message list, in DOM order. */
export async function offsets(page) {
  return page.$$eval('.messages li[data-offset]', (els) => els.map((e) => Number(e.getAttribute('data-offset'))));
}

export function assertAscendingUnique(list, what) {
  for (let i = 1; i < list.length; i++) {
    assert.ok(list[i] > list[i - 1], `${what}: offsets not strictly ascending at ${i}: ${list[i - 1]} then ${list[i]}`);
  }
}
