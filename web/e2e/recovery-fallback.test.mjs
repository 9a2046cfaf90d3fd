// The client's fallback when the gateway cannot recover what it missed: B talks
// to a second gateway instance of our own with a recovery window of 5
// publications per room (same broker, topic and JWT secret as the stack), goes
// offline while A sends 12 messages, and on reconnect gets `recovered: false`;
// the client must then reload from REST history, showing every message once.
//
// Needs the release gateway binary that `ops/dev up` builds
// (target/release/confab-gateway, or CONFAB_GATEWAY_BIN); skipped without it.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import {
  APP_URL, WAIT, appUrl, artifacts, assertAscendingUnique, checkStack, devEnv, launch, msg, offsets, register, repoRoot,
  send, shot,
} from './lib.mjs';

const BIN = process.env.CONFAB_GATEWAY_BIN || join(repoRoot, 'target', 'release', 'confab-gateway');
const WINDOW = 5;
const MISSED = 12;
const run = Date.now().toString(36);

let gateway;
let gatewayLog = '';
let browser;
let pageA;
let pageB;
let ctxB;

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function startGateway() {
  const port = await freePort();
  const env = { ...devEnv(), ...process.env };
  const childEnv = {
    PATH: process.env.PATH,
    KAFKA_BROKERS: env.KAFKA_BROKERS,
    CONFAB_KAFKA_TOPIC: env.CONFAB_KAFKA_TOPIC || 'confab.rooms',
    CONFAB_JWT_SECRET: env.CONFAB_JWT_SECRET,
    CONFAB_GATEWAY_ADDR: `127.0.0.1:${port}`,
    CONFAB_GATEWAY_HISTORY_SIZE: String(WINDOW),
    CONFAB_LOG_FORMAT: 'text',
  };
  assert.ok(childEnv.KAFKA_BROKERS && childEnv.CONFAB_JWT_SECRET, 'KAFKA_BROKERS and CONFAB_JWT_SECRET are needed (.dev/env)');
  gateway = spawn(BIN, [], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  for (const s of [gateway.stdout, gateway.stderr]) s.on('data', (d) => { gatewayLog = (gatewayLog + d).slice(-4000); });
  const deadline = Date.now() + 90_000;
  while (Date.now() < deadline) {
    assert.equal(gateway.exitCode, null, `the gateway exited: ${gatewayLog}`);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/healthz`);
      if (res.ok) return `ws://127.0.0.1:${port}/connection/websocket`;
    } catch {
      /* not listening yet */
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.fail(`the gateway did not become healthy: ${gatewayLog}`);
}

describe('recovery outside the gateway window falls back to REST history', { skip: !existsSync(BIN) && `no ${BIN}`, timeout: 180_000 }, () => {
  let smallWs;

  before(async () => {
    mkdirSync(artifacts, { recursive: true });
    await checkStack();
    smallWs = await startGateway();
    browser = await launch();
    const ctxA = await browser.newContext({ viewport: { width: 1000, height: 700 } });
    ctxB = await browser.newContext({ viewport: { width: 1000, height: 700 } });
    for (const ctx of [ctxA, ctxB]) ctx.setDefaultTimeout(WAIT);
    pageA = await ctxA.newPage();
    pageB = await ctxB.newPage();
  });

  after(async () => {
    await browser?.close();
    if (gateway && gateway.exitCode === null) {
      gateway.kill('SIGTERM');
      await new Promise((r) => gateway.once('exit', r));
    }
  });

  it(`B misses ${MISSED} messages (window ${WINDOW}) and still sees each exactly once`, async () => {
    const name = `Public ${run}`;
    await register(pageA, `carol_${run}`, APP_URL);
    await pageA.locator('summary', { hasText: 'New room' }).click();
    await pageA.getByLabel('Name', { exact: true }).fill(name);
    await pageA.getByRole('button', { name: 'Create room' }).click();
    await pageA.waitForURL(/#\/room\/[0-9a-f-]{36}$/);
    const roomId = /#\/room\/([0-9a-f-]{36})$/.exec(pageA.url())[1];

    await register(pageB, `dave_${run}`, appUrl(smallWs));
    await pageB.getByLabel('Room ID or link').fill(roomId);
    await pageB.getByRole('button', { name: 'Open', exact: true }).click();
    await pageB.getByRole('button', { name: 'Join room' }).click();
    await pageB.locator('#room-title', { hasText: name }).waitFor();
    await send(pageA, 'before the outage');
    await msg(pageB, 'before the outage').waitFor();

    await ctxB.setOffline(true);
    await pageB.locator('.banner', { hasText: 'Reconnecting' }).waitFor();
    for (let i = 1; i <= MISSED; i++) {
      await send(pageA, `missed ${i}`);
      await pageA.waitForTimeout(60);
    }
    await msg(pageA, `missed ${MISSED}`).waitFor();
    await ctxB.setOffline(false);
    await pageB.locator('.banner').waitFor({ state: 'hidden', timeout: 30_000 });
    for (let i = 1; i <= MISSED; i++) await msg(pageB, `missed ${i}`).waitFor();
    assert.equal(await pageB.locator('.room').getAttribute('data-last-recovery'), 'rest', 'the gateway should have answered recovered: false');
    await send(pageA, 'after the outage');
    await msg(pageB, 'after the outage').waitFor();
    for (let i = 1; i <= MISSED; i++) assert.equal(await msg(pageB, `missed ${i}`).count(), 1, `missed ${i} once`);
    assertAscendingUnique(await offsets(pageB), 'B after fallback');
    await shot(pageB, '20-recovery-fallback-B');
  });
});
