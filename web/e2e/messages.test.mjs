// End-to-end test of CONTRACT §7 in the web client: B edits, deletes, reacts
// and replies; A sees each change live without a reload, and after one; search
// results open the room at the message. Runs against the stack like
// chat.test.mjs (`ops/dev up -d`, the client built into web/dist).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { APP_URL, WAIT, artifacts, checkStack, launch, msg, register, send, shot } from './lib.mjs';

const run = Date.now().toString(36);
const userA = `ann_${run}`;
const userB = `ben_${run}`;
const roomName = `Changes ${run}`;

let browser;
let pageA;
let pageB;
let roomId;
const consoleErrors = [];

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  await checkStack();
  browser = await launch();
  const pages = [];
  for (const who of ['A', 'B']) {
    const ctx = await browser.newContext({ viewport: { width: 1200, height: 800 } });
    ctx.setDefaultTimeout(WAIT);
    const page = await ctx.newPage();
    page.on('pageerror', (e) => consoleErrors.push(`${who} pageerror: ${e.message}`));
    pages.push(page);
  }
  [pageA, pageB] = pages;
});

after(async () => {
  if (consoleErrors.length) console.log(`browser errors:\n  ${consoleErrors.join('\n  ')}`);
  await browser?.close();
});

/** Shows a message's actions (they appear on hover) and clicks one. */
async function action(page, text, name) {
  const m = msg(page, text);
  await m.hover();
  await m.locator('.msg-actions').getByRole('button', { name, exact: true }).click();
}

async function reactWith(page, text, emoji) {
  const m = msg(page, text);
  await m.hover();
  await m.locator('.react-picker summary').click();
  await m.getByRole('button', { name: `React ${emoji}` }).click();
}

describe('message changes, two users', { timeout: 240_000 }, () => {
  it('1. A creates a public room, B joins, both send', async () => {
    await register(pageA, userA);
    await pageA.locator('summary', { hasText: 'New room' }).click();
    await pageA.getByLabel('Name', { exact: true }).fill(roomName);
    await pageA.getByRole('button', { name: 'Create room' }).click();
    await pageA.waitForURL(/#\/room\/[0-9a-f-]{36}$/);
    roomId = /#\/room\/([0-9a-f-]{36})$/.exec(pageA.url())[1];
    await pageA.locator('.sub-status[data-state=ok]').waitFor({ state: 'attached' });

    await register(pageB, userB, APP_URL);
    await pageB.getByLabel('Room ID or link').fill(roomId);
    await pageB.getByRole('button', { name: 'Open', exact: true }).click();
    await pageB.getByRole('button', { name: 'Join room' }).click();
    await pageB.locator('#room-title', { hasText: roomName }).waitFor();
    await pageB.locator('.sub-status[data-state=ok]').waitFor({ state: 'attached' });

    await send(pageB, 'a typo mesage');
    await send(pageB, 'take this back');
    await send(pageA, 'react to this');
    for (const page of [pageA, pageB]) {
      for (const text of ['a typo mesage', 'take this back', 'react to this']) await msg(page, text).waitFor();
    }
  });

  it('2. B edits a message; A sees it live', async () => {
    // Changes name stored messages: let the persister catch up first.
    await pageB.waitForTimeout(500);
    await action(pageB, 'a typo mesage', 'Edit');
    const box = pageB.getByRole('textbox', { name: 'Edit message' });
    await box.fill('a typo message');
    await box.press('Enter');
    await msg(pageB, 'a typo message').waitFor();
    const edited = msg(pageA, 'a typo message');
    await edited.waitFor();
    assert.ok(await edited.evaluate((el) => el.classList.contains('edited')), 'marked edited');
    assert.equal(await msg(pageA, 'a typo mesage').count(), 0);
    // A cannot edit B's message.
    await msg(pageA, 'a typo message').hover();
    assert.equal(await msg(pageA, 'a typo message').getByRole('button', { name: 'Edit', exact: true }).count(), 0);
  });

  it('3. B deletes a message; A sees it go', async () => {
    await action(pageB, 'take this back', 'Delete');
    await pageA.locator('.msg.deleted .text', { hasText: 'This message was deleted.' }).waitFor();
    assert.equal(await msg(pageA, 'take this back').count(), 0);
    await pageB.locator('.msg.deleted').waitFor();
  });

  it('4. B reacts; A sees the count live, and adds to it', async () => {
    await reactWith(pageB, 'react to this', '👍');
    const onA = msg(pageA, 'react to this').locator('.reaction[data-emoji="👍"]');
    await onA.locator('.count', { hasText: '1' }).waitFor();
    assert.equal(await onA.getAttribute('aria-pressed'), 'false');
    await onA.click();
    await onA.locator('.count', { hasText: '2' }).waitFor();
    assert.equal(await onA.getAttribute('aria-pressed'), 'true');
    await msg(pageB, 'react to this').locator('.reaction[data-emoji="👍"] .count', { hasText: '2' }).waitFor();
  });

  it('5. B replies with a quote; A sees it and jumps to the quoted message', async () => {
    await action(pageB, 'react to this', 'Reply');
    await pageB.locator('.reply-bar', { hasText: 'react to this' }).waitFor();
    await send(pageB, 'this is a reply');
    const reply = msg(pageA, 'this is a reply');
    await reply.waitFor();
    const quote = reply.locator('.quote');
    await quote.filter({ hasText: 'react to this' }).waitFor();
    await quote.click();
    await pageA.locator('.msg.highlight .text', { hasText: 'react to this' }).waitFor();
    await shot(pageA, 'm1-changes-live-A');
  });

  it('6. after a reload A sees every change folded into history', async () => {
    await pageA.waitForTimeout(500);
    await pageA.reload();
    await pageA.locator('#room-title', { hasText: roomName }).waitFor();
    const edited = msg(pageA, 'a typo message');
    await edited.waitFor();
    assert.ok(await edited.evaluate((el) => el.classList.contains('edited')));
    assert.equal(await msg(pageA, 'take this back').count(), 0);
    await pageA.locator('.msg.deleted .text', { hasText: 'This message was deleted.' }).waitFor();
    const thumbs = msg(pageA, 'react to this').locator('.reaction[data-emoji="👍"]');
    await thumbs.locator('.count', { hasText: '2' }).waitFor();
    assert.equal(await thumbs.getAttribute('aria-pressed'), 'true');
    await msg(pageA, 'this is a reply').locator('.quote', { hasText: 'react to this' }).waitFor();
    await shot(pageA, 'm2-after-reload-A');
  });

  it('7. search opens the room at the message, and never shows deleted text', async () => {
    await pageA.getByLabel('Search messages').fill('message');
    await pageA.getByLabel('Search messages').press('Enter');
    const result = pageA.locator('.search-result', { hasText: 'a typo message' });
    await result.waitFor();
    await shot(pageA, 'm3-search-A');
    await result.click();
    await pageA.locator('#room-title', { hasText: roomName }).waitFor();
    await pageA.locator('.msg.highlight .text', { hasText: 'a typo message' }).waitFor();

    await pageA.getByLabel('Search messages').fill('back');
    await pageA.getByLabel('Search messages').press('Enter');
    await pageA.locator('.search-results li', { hasText: 'No messages found.' }).waitFor();
    assert.deepEqual(consoleErrors, []);
  });
});
