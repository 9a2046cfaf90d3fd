// End-to-end tests of the web client in a real headless Chromium (Debian's
// /usr/bin/chromium driven by playwright-core), against the running stack
// (`ops/dev up -d`): auth-api serving web/dist plus the REST API, the gateway,
// the persister, PostgreSQL and the broker.
//
// Addresses come from CONFAB_API_URL / CONFAB_WS_URL, or else from the repo's
// .dev/env written by `ops/dev up`. Screenshots go to web/e2e/artifacts/.
//
// Two browser contexts are two users: A (desktop-sized) and B (phone-sized).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import {
  API, APP_URL, PASSWORD, WAIT, appUrl, artifacts, assertAscendingUnique, checkStack, launch, msg, offsets, register, send, shot,
} from './lib.mjs';

const run = Date.now().toString(36);
const userA = `alice_${run}`;
const userB = `bob_${run}`;
const ROOM_PASSWORD = 'open-sesame-7';
const roomName = `Secret club ${run}`;
const SEEDS = 60;

let browser;
let ctxA;
let ctxB;
let pageA;
let pageB;
let roomId;
const consoleErrors = [];

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  await checkStack();
  browser = await launch();
  ctxA = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  ctxB = await browser.newContext({ viewport: { width: 390, height: 780 }, deviceScaleFactor: 2 });
  for (const ctx of [ctxA, ctxB]) ctx.setDefaultTimeout(WAIT);
  pageA = await ctxA.newPage();
  pageB = await ctxB.newPage();
  for (const [who, page] of [['A', pageA], ['B', pageB]]) {
    page.on('pageerror', (e) => consoleErrors.push(`${who} pageerror: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(`${who} console: ${m.text()}`);
    });
  }
});

after(async () => {
  if (consoleErrors.length) console.log(`browser console errors:\n  ${consoleErrors.join('\n  ')}`);
  await browser?.close();
});

describe('web client, two users', { timeout: 300_000 }, () => {
  it('1. A registers and creates a private room with a password', async () => {
    await pageA.goto(APP_URL);
    await pageA.getByRole('button', { name: 'Log in' }).waitFor();
    await shot(pageA, '01-login');
    await register(pageA, userA);
    await pageA.locator('summary', { hasText: 'New room' }).click();
    await pageA.getByLabel('Name', { exact: true }).fill(roomName);
    await pageA.getByLabel('Private, with a password').check();
    await pageA.getByLabel('Room password').fill(ROOM_PASSWORD);
    await pageA.getByRole('button', { name: 'Create room' }).click();
    await pageA.waitForURL(/#\/room\/[0-9a-f-]{36}$/);
    roomId = /#\/room\/([0-9a-f-]{36})$/.exec(pageA.url())[1];
    await pageA.locator('#room-title', { hasText: roomName }).waitFor();
    await pageA.locator('.room-link', { hasText: roomName }).locator('.badge.password').waitFor();
    await pageA.locator('.sub-status[data-state=ok]').waitFor({ state: 'attached' });
    await pageA.locator('.online-list li', { hasText: userA }).waitFor();
    await shot(pageA, '02-room-created-A');
  });

  it('2. B gets an error for a wrong password, then joins with the right one', async () => {
    await register(pageB, userB);
    await shot(pageB, '03-rooms-B-phone');
    await pageB.getByLabel('Room ID or link').fill(`${API}/#/room/${roomId}`);
    await pageB.getByRole('button', { name: 'Open', exact: true }).click();
    const password = pageB.locator('#join-password');
    await password.fill('not-the-password');
    await pageB.getByRole('button', { name: 'Join room' }).click();
    const error = pageB.locator('.join-panel .error');
    await error.filter({ hasText: 'Wrong password' }).waitFor();
    await shot(pageB, '04-wrong-password-B');
    assert.equal(await pageB.locator('.room').count(), 0, 'B must not be in the room after a wrong password');
    await password.fill(ROOM_PASSWORD);
    await password.press('Enter');
    await pageB.locator('#room-title', { hasText: roomName }).waitFor();
    await pageB.locator('.sub-status[data-state=ok]').waitFor({ state: 'attached' });
  });

  it('3. both send; each sees the other live; A sees B join', async () => {
    await pageA.locator('.notice.member_joined', { hasText: userB }).waitFor();
    await pageA.locator('.online-list li', { hasText: userB }).waitFor();
    await send(pageB, 'hello from B');
    await msg(pageA, 'hello from B').waitFor();
    await send(pageA, 'hi B, it is A');
    await msg(pageB, 'hi B, it is A').waitFor();
    await msg(pageA, 'hi B, it is A').waitFor();
    await msg(pageB, 'hello from B').waitFor();
    // Sender names resolve to usernames on both sides.
    await msg(pageA, 'hello from B').locator('.sender', { hasText: userB }).waitFor({ state: 'attached' });
    await msg(pageB, 'hi B, it is A').locator('.sender', { hasText: userA }).waitFor({ state: 'attached' });
    // User content is text, never markup.
    const markup = '<img src=x onerror="window.__xss=1"><b>bold?</b>';
    await send(pageA, markup);
    await msg(pageB, markup).waitFor();
    assert.equal(await pageB.evaluate(() => window.__xss), undefined);
    assert.equal(await pageB.locator('.messages img, .messages b').count(), 0);
    await shot(pageA, '05-chat-A');
    await shot(pageB, '06-chat-B-phone');
  });

  it('4. B reloads and sees the history', async () => {
    // Paced under the gateway's per-connection publish rate limit.
    for (let i = 1; i <= SEEDS; i++) {
      await send(pageA, `seed ${i}`);
      await pageA.waitForTimeout(60);
    }
    await msg(pageA, `seed ${SEEDS}`).waitFor({ timeout: 60_000 });
    await msg(pageB, `seed ${SEEDS}`).waitFor({ timeout: 60_000 });
    const live = await offsets(pageB);
    assertAscendingUnique(live, 'B live');
    await pageB.reload();
    await pageB.locator('#room-title', { hasText: roomName }).waitFor();
    await msg(pageB, `seed ${SEEDS}`).waitFor();
    await msg(pageB, `seed ${SEEDS - 40}`).waitFor();
    const after = await offsets(pageB);
    assertAscendingUnique(after, 'B after reload');
    assert.ok(after.length >= 50, `expected at least one page (50) of history, got ${after.length}`);
    assert.ok(
      (await pageB.getByRole('button', { name: 'Load older messages' }).count()) === 1,
      'older history should be offered',
    );
    await shot(pageB, '07-history-after-reload-B');
  });

  it('5. scrolling back loads older pages', async () => {
    const before = (await offsets(pageB)).length;
    assert.equal(await msg(pageB, 'hello from B').count(), 0, 'the oldest messages should not be loaded yet');
    const scroller = pageB.locator('.scroller');
    await scroller.hover();
    for (let i = 0; i < 20 && (await msg(pageB, 'hello from B').count()) === 0; i++) {
      await pageB.mouse.wheel(0, -4000);
      await pageB.waitForTimeout(300);
    }
    await msg(pageB, 'hello from B').waitFor();
    await msg(pageB, 'seed 1').waitFor();
    await pageB.locator('.notice.member_joined', { hasText: userB }).waitFor();
    await pageB.locator('.history-start').waitFor();
    const all = await offsets(pageB);
    assertAscendingUnique(all, 'B after scroll-back');
    assert.ok(all.length > before, `scroll-back added nothing (${before} → ${all.length})`);
    for (let i = 1; i <= SEEDS; i++) {
      assert.equal(await msg(pageB, `seed ${i}`).count(), 1, `seed ${i} should appear exactly once`);
    }
    await scroller.evaluate((el) => { el.scrollTop = 0; });
    await shot(pageB, '08-scrollback-B');
  });

  it('6. B loses its connection: banner, then automatic recovery of missed messages', async () => {
    // Going offline fires the browser's `offline` event; centrifuge-js drops the
    // transport and keeps retrying until the network is back.
    await ctxB.setOffline(true);
    await pageB.locator('.banner', { hasText: 'Reconnecting' }).waitFor();
    await shot(pageB, '09-reconnecting-B');
    await send(pageA, 'sent while B was offline 1');
    await send(pageA, 'sent while B was offline 2');
    await msg(pageA, 'sent while B was offline 2').waitFor();
    await ctxB.setOffline(false);
    await pageB.locator('.banner').waitFor({ state: 'hidden', timeout: 30_000 });
    await msg(pageB, 'sent while B was offline 1').waitFor();
    await msg(pageB, 'sent while B was offline 2').waitFor();
    assert.equal(await pageB.locator('.room').getAttribute('data-last-recovery'), 'recovered', 'expected recovery from the gateway window');
    assertAscendingUnique(await offsets(pageB), 'B after recovery');
  });

  it('7. B leaves the room; A sees the notice', async () => {
    await pageB.getByRole('button', { name: 'Leave', exact: true }).click();
    await pageB.waitForURL(/#\/$/);
    await pageA.locator('.notice.member_left', { hasText: userB }).waitFor();
    await pageA.locator('.online-list li', { hasText: userB }).waitFor({ state: 'detached' });
    await shot(pageA, '10-after-leave-A');
  });

  it('8. invite-only room: B is refused until A invites B', async () => {
    const name = `Invite only ${run}`;
    await pageA.locator('summary', { hasText: 'New room' }).click();
    await pageA.getByLabel('Name', { exact: true }).fill(name);
    await pageA.getByLabel('Private, invite only').check();
    await pageA.getByRole('button', { name: 'Create room' }).click();
    await pageA.locator('#room-title', { hasText: name }).waitFor();
    const inviteRoom = /#\/room\/([0-9a-f-]{36})$/.exec(pageA.url())[1];
    await pageA.locator('.room-link', { hasText: name }).locator('.badge.invite').waitFor();

    await pageB.getByLabel('Room ID or link').fill(inviteRoom);
    await pageB.getByRole('button', { name: 'Open', exact: true }).click();
    await pageB.getByRole('button', { name: 'Join room' }).click();
    await pageB.locator('.join-panel .error').filter({ hasText: 'invite-only' }).waitFor();
    await shot(pageB, '11-invite-required-B');

    await pageA.locator('summary', { hasText: 'Invite' }).click();
    await pageA.getByLabel('Username to invite').fill(userB);
    await pageA.getByLabel('Username to invite').press('Enter');
    await pageA.locator('.form-status', { hasText: `Invited ${userB}` }).waitFor();
    await pageA.getByLabel('Username to invite').fill(`nobody_${run}`);
    await pageA.getByLabel('Username to invite').press('Enter');
    await pageA.locator('.form-status.error').waitFor();
    await shot(pageA, '12-invite-A');

    await pageB.getByRole('button', { name: 'Join room' }).click();
    await pageB.locator('#room-title', { hasText: name }).waitFor();
    await pageA.locator('.notice.member_joined', { hasText: userB }).waitFor();
    await send(pageB, 'thanks for the invite');
    await msg(pageA, 'thanks for the invite').waitFor();
  });

  it('9. an unreachable gateway shows a connection error', async () => {
    const ctx = await browser.newContext({ viewport: { width: 800, height: 600 } });
    try {
      const page = await ctx.newPage();
      await register(page, `eve_${run}`, appUrl('ws://127.0.0.1:9/connection/websocket'));
      await page.locator('.banner', { hasText: 'Cannot reach the chat server' }).waitFor();
      assert.equal(await page.locator('.conn-dot').getAttribute('data-state'), 'connecting');
      await shot(page, '14-gateway-unreachable');
    } finally {
      await ctx.close();
    }
  });

  it('10. log out, log back in: the session and rooms come back', async () => {
    await pageB.getByRole('button', { name: 'Log out' }).click();
    await pageB.getByRole('button', { name: 'Log in' }).waitFor();
    await pageB.getByLabel('Username').fill(userB);
    await pageB.getByLabel('Password').fill('wrong-password-xx');
    await pageB.getByLabel('Password').press('Enter');
    await pageB.locator('.auth .error', { hasText: 'Wrong username or password' }).waitFor();
    await pageB.getByLabel('Password').fill(PASSWORD);
    await pageB.getByLabel('Password').press('Enter');
    await pageB.locator('.me-name', { hasText: userB }).waitFor({ state: 'attached' });
    await pageB.locator('.room-link', { hasText: `Invite only ${run}` }).waitFor();
    await pageB.getByLabel('Filter rooms').fill(`only ${run}`);
    await pageB.locator('.room-link', { hasText: roomName }).waitFor({ state: 'detached' });
    assert.equal(await pageB.locator('.room-link').count(), 1, 'the filter should leave one room');
    await shot(pageB, '13-filtered-rooms-B');
    // A token the API no longer accepts sends the user back to the login form.
    await pageB.evaluate(() => {
      const s = JSON.parse(sessionStorage.getItem('confab.session'));
      s.token = `${s.token}x`;
      sessionStorage.setItem('confab.session', JSON.stringify(s));
    });
    await pageB.reload();
    await pageB.locator('.auth .error', { hasText: 'session has expired' }).waitFor();
  });
});
