// Linking a machine with a code and unlinking it (issue 12), in a real browser: the real
// `jewelfs login` shows a code and the portal page that approves it; the user, signed in to
// the portal, approves it there; the machine's own token lands in its config file (0600).
// Then the machine is unlinked from the portal, and (linked again) from `jewelfs devices`.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

import { Server, waitFor, bin, repoRoot } from '../lib/jewel.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const LIVE_MS = 8000;

/** `jewelfs login URL` as a person starts it on a new machine (its own config folder). */
async function startLogin(server, home, name) {
  const child = spawn(bin('jewelfs'), ['login', server.url, '--name', name], {
    env: ownConfig(home),
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  let exit = null;
  child.stdout.on('data', (d) => { out += d; });
  const done = new Promise((r) => child.on('exit', (code) => { exit = code; r(code); }));
  const code = await waitFor('jewelfs login to show a code', 20000, () => {
    if (exit !== null) throw new Error(`jewelfs login exited with ${exit}:\n${out}`);
    const m = /approve the code\s+([A-Z0-9]{4}-[A-Z0-9]{4})/.exec(out);
    return m && m[1];
  });
  const url = /(http:\/\/\S+\/#\/link\/\S+)/.exec(out)[1];
  return { child, code, url, done, output: () => out };
}

/** The environment of a machine whose settings are in `home`'s config file only. */
function ownConfig(home) {
  const env = { ...process.env, XDG_CONFIG_HOME: home };
  delete env.JEWEL_TOKEN;
  delete env.JEWEL_SERVER;
  return env;
}

/** The token `jewelfs login` kept, checking the file is its owner's only. */
function savedToken(home) {
  const path = join(home, 'jewel', 'config.toml');
  assert.equal(statSync(path).mode & 0o777, 0o600, `${path} is readable by others`);
  const m = /^token = "([^"]+)"$/m.exec(readFileSync(path, 'utf8'));
  assert.ok(m, 'the config file holds a token');
  return m[1];
}

async function meStatus(server, token) {
  const r = await fetch(`${server.url}/api/v1/me`, { headers: { authorization: `Bearer ${token}` } });
  return r.status;
}

const deviceRow = (page, name) => page.locator('#device-rows tr.device').filter({
  has: page.locator('.name', { hasText: new RegExp(`^${name}$`) }),
});

const JEWELFS = join(process.env.CARGO_TARGET_DIR || join(repoRoot, 'target'), 'debug', 'jewelfs');

describe('linking and unlinking machines in chromium', { skip: !existsSync(JEWELFS) && 'target/debug/jewelfs is not built' }, () => {
  let server;
  let account;
  let context;
  let page;
  let profile;
  let home;
  const pageErrors = [];

  before(async () => {
    server = await Server.start();
    account = server.addUser('ann');
    home = mkdtempSync(join(tmpdir(), 'jewel-login-home-'));
    profile = mkdtempSync(join(tmpdir(), 'jewel-portal-chromium-'));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM, headless: true, args: ARGS, viewport: { width: 1280, height: 800 },
    });
    page = context.pages()[0] || await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(String(e)));
  });

  after(async () => {
    if (context) await context.close();
    if (server) await server.stop();
    for (const dir of [profile, home]) if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('links a second machine: jewelfs login shows a code, the portal approves it', async () => {
    const login = await startLogin(server, home, 'laptop');
    assert.equal(login.url, `${server.url}/#/link/${login.code}`);
    // The page jewelfs login names: sign in first, then it asks about the waiting machine.
    await page.goto(login.url);
    await page.fill('#token', account);
    await page.click('#signin-button');
    await page.locator('#link-question', { hasText: '“laptop”' }).waitFor();
    assert.equal(await page.inputValue('#link-code'), login.code);
    await page.click('#link-approve');
    assert.equal(await login.done, 0, `jewelfs login failed:\n${login.output()}`);
    const token = savedToken(home);
    assert.notEqual(token, account, 'the machine has its own token');
    assert.ok(!login.output().includes(token), 'the token is never shown');
    assert.equal(await meStatus(server, token), 200);
    await deviceRow(page, 'laptop').locator('.c-token', { hasText: 'own' }).waitFor();
    assert.match(await page.evaluate(() => location.hash), /^#\/devices$/);
  });

  it('unlinks it from the portal: its token is refused at once', async () => {
    const token = savedToken(home);
    await deviceRow(page, 'laptop').locator('button.unlink').click();
    await page.locator('#ask[open] #ask-title', { hasText: 'Unlink “laptop”?' }).waitFor();
    await page.locator('#ask-buttons button', { hasText: 'Unlink' }).click();
    await deviceRow(page, 'laptop').waitFor({ state: 'detached' });
    assert.equal(await meStatus(server, token), 401);
    await page.locator('#devices-empty').waitFor();
  });

  it('refuses a code nobody waits with, then links by the typed code', async () => {
    await page.fill('#link-code', 'zzzz-zzzz');
    await page.click('#link-find');
    await page.locator('#link-error', { hasText: 'No machine waits' }).waitFor();
    const login = await startLogin(server, home, 'laptop');
    await page.fill('#link-code', login.code.toLowerCase().replace('-', ' '));
    await page.click('#link-find');
    await page.locator('#link-question', { hasText: '“laptop”' }).waitFor();
    await page.click('#link-approve');
    assert.equal(await login.done, 0, `jewelfs login failed:\n${login.output()}`);
    await deviceRow(page, 'laptop').waitFor();
  });

  it('unlinks it from `jewelfs devices`: the portal follows', async () => {
    const token = savedToken(home);
    const env = ownConfig(home);
    const list = execFileSync(bin('jewelfs'), ['devices'], { env, encoding: 'utf8' });
    assert.match(list, /laptop\s+own\s.*\(this machine\)/);
    const out = execFileSync(bin('jewelfs'), ['devices', 'unlink', 'laptop'], { env, encoding: 'utf8' });
    assert.match(out, /no longer works/);
    assert.equal(await meStatus(server, token), 401);
    await deviceRow(page, 'laptop').waitFor({ state: 'detached', timeout: LIVE_MS });
    assert.deepEqual(pageErrors, [], 'no script errors');
  });
});
