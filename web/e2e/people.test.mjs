// End-to-end tests of the people features of the web client (CONTRACT §8) in
// headless Chromium against the running stack: unread badges that rise and
// clear, "seen by", the typing indicator, direct messages opened from the
// member list, and a moderator's kick that closes the room for the member.
//
// Two browser contexts are two users: A owns the room, B joins it.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { APP_URL, WAIT, artifacts, checkStack, launch, msg, register, send, shot } from './lib.mjs';

const run = Date.now().toString(36);
const userA = `ann_${run}`;
const userB = `ben_${run}`;
const roomName = `People ${run}`;

let browser;
let pageA;
let pageB;
let roomId;
const consoleErrors = [];

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  await checkStack();
  browser = await launch();
  for (const who of ['A', 'B']) {
    const ctx = await browser.newContext({ viewport: { width: 1200, height: 800 } });
    ctx.setDefaultTimeout(WAIT);
    const page = await ctx.newPage();
    page.on('pageerror', (e) => consoleErrors.push(`${who} pageerror: ${e.message}`));
    if (who === 'A') pageA = page;
    else pageB = page;
  }
});

after(async () => {
  if (consoleErrors.length) console.log(`browser errors:\n  ${consoleErrors.join('\n  ')}`);
  await browser?.close();
});

/** The room list entry of `id` on `page`. */
function link(page, id) {
  return page.locator(`.room-link[data-room-id="${id}"]`);
}

/** Opens the member list popover of the open room. */
async function members(page) {
  const popover = page.locator('details.members-popover');
  if (!(await popover.evaluate((d) => d.open))) await popover.locator('summary').click();
  return popover;
}

describe('web client, people', { timeout: 300_000 }, () => {
  it('1. A creates a public room and B joins it', async () => {
    await register(pageA, userA);
    await pageA.locator('summary', { hasText: 'New room' }).click();
    await pageA.getByLabel('Name', { exact: true }).fill(roomName);
    await pageA.getByRole('button', { name: 'Create room' }).click();
    await pageA.waitForURL(/#\/room\/[0-9a-f-]{36}$/);
    roomId = /#\/room\/([0-9a-f-]{36})$/.exec(pageA.url())[1];
    await pageA.locator('.sub-status[data-state=ok]').waitFor({ state: 'attached' });

    await register(pageB, userB);
    await pageB.goto(`${APP_URL}#/room/${roomId}`);
    await pageB.getByRole('button', { name: 'Join room' }).click();
    await pageB.locator('#room-title', { hasText: roomName }).waitFor();
    await pageB.locator('.sub-status[data-state=ok]').waitFor({ state: 'attached' });
  });

  it('2. unread badges rise while B is away and clear when B opens the room; A sees "seen by"', async () => {
    await pageB.goto(`${APP_URL}#/`);
    await pageB.locator('.welcome').waitFor();
    await link(pageB, roomId).waitFor();
    assert.equal(await link(pageB, roomId).locator('.badge.unread').count(), 0, 'nothing unread yet');
    await send(pageA, 'first unread');
    await send(pageA, 'second unread');
    await msg(pageA, 'second unread').waitFor();
    await link(pageB, roomId).locator('.badge.unread[data-unread="2"]').waitFor();
    await shot(pageB, 'people-01-unread-B');
    // One more while B looks at the list: the badge rises.
    await send(pageA, 'third unread');
    await link(pageB, roomId).locator('.badge.unread[data-unread="3"]').waitFor();

    await link(pageB, roomId).click();
    await msg(pageB, 'third unread').waitFor();
    await link(pageB, roomId).locator('.badge.unread').waitFor({ state: 'detached' });
    // Read on the server too: back on the list, after a reload of it, no badge.
    await pageB.goto(`${APP_URL}#/`);
    await link(pageB, roomId).waitFor();
    await pageB.waitForTimeout(3500);
    assert.equal(await link(pageB, roomId).locator('.badge.unread').count(), 0, 'cleared for good');
    await pageA.locator('.seen-by', { hasText: `Seen by ${userB}` }).waitFor();
    await shot(pageA, 'people-02-seen-by-A');
  });

  // Needs the gateway's `rpc typing` (CONTRACT §8).
  it('3. typing shows on the other side and stops', async () => {
    await link(pageB, roomId).click();
    await pageB.locator('.sub-status[data-state=ok]').waitFor({ state: 'attached' });
    const box = pageA.getByRole('textbox', { name: 'Message' });
    await box.pressSequentially('hello the', { delay: 30 });
    const typing = pageB.locator('.typing', { hasText: `${userA} is typing…` });
    await typing.waitFor();
    await shot(pageB, 'people-03-typing-B');
    await typing.waitFor({ state: 'hidden', timeout: 8000 });
    await box.fill('');
  });

  it('4. B opens a direct message with A from the member list', async () => {
    const list = await members(pageB);
    const row = list.locator('.member', { hasText: userA });
    await row.locator('.badge.role-owner').waitFor();
    await row.getByRole('button', { name: 'Message' }).click();
    await pageB.locator('#room-title', { hasText: userA }).waitFor();
    await pageB.locator('.room .badge.direct').waitFor();
    const dmId = /#\/room\/([0-9a-f-]{36})$/.exec(pageB.url())[1];
    assert.notEqual(dmId, roomId);
    await pageB.locator('.dm-list .room-link', { hasText: userA }).waitFor();
    await pageB.locator('.sub-status[data-state=ok]').waitFor({ state: 'attached' });
    await send(pageB, 'a private word');
    await msg(pageB, 'a private word').waitFor();
    // A finds the DM listed apart from the rooms, with the unread message.
    const dmA = pageA.locator(`.dm-list .room-link[data-room-id="${dmId}"]`);
    await dmA.locator('.badge.unread[data-unread="1"]').waitFor();
    assert.equal(await pageA.locator(`.room-list:not(.dm-list) [data-room-id="${dmId}"]`).count(), 0);
    await dmA.click();
    await msg(pageA, 'a private word').waitFor();
    await shot(pageA, 'people-04-dm-A');
  });

  it('5. the owner kicks B, whose room closes at once', async () => {
    await link(pageB, roomId).click();
    await pageB.locator('#room-title', { hasText: roomName }).waitFor();
    await pageB.locator('.sub-status[data-state=ok]').waitFor({ state: 'attached' });
    await link(pageA, roomId).click();
    await pageA.locator('#room-title', { hasText: roomName }).waitFor();
    const list = await members(pageA);
    const row = list.locator('.member', { hasText: userB });
    await row.getByRole('button', { name: 'Kick' }).click();
    await pageB.locator('.removed-notice', { hasText: `removed from ${roomName} by ${userA}` }).waitFor();
    assert.equal(await pageB.locator('.room').count(), 0, "B's room view is closed");
    await pageA.locator('.notice.kicked', { hasText: `was kicked by ${userA}` }).waitFor();
    await list.locator('.member', { hasText: userB }).waitFor({ state: 'detached' });
    await shot(pageB, 'people-05-kicked-B');
    // B only sees the room as a non-member now. (By its address: a public
    // room B is not in is listed only if it is on the pages B has loaded,
    // and the dev stack holds hundreds of rooms from other suites.)
    await pageB.goto(`${APP_URL}#/room/${roomId}`);
    await pageB.getByRole('button', { name: 'Join room' }).waitFor();
  });
});
