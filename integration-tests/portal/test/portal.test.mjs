// The web portal in a real browser: Debian's chromium, driven by playwright-core, against a
// real jewel-server on loopback. The API client in lib/jewel.mjs stands in for another machine
// of the same user. Run: `make test-portal` (or `npm test` here, after `cargo build`).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync, rmSync, mkdirSync, existsSync, renameSync, unlinkSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

import { Server, Mount, mountUnavailable, waitFor, sha256, repoRoot, BLOCK } from '../lib/jewel.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const HOSTILE = '<img src=x onerror=alert(1)>';
const LIVE_MS = 8000; // how long a change from "another machine" may take to show

const row = (page, name) => page.locator('#rows tr.row').filter({
  has: page.locator('.name', { hasText: new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`) }),
});
const trashRow = (page, name) => page.locator('#trash-rows tr.row').filter({
  has: page.locator('.name', { hasText: new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`) }),
});
const rowNames = (page) => page.locator('#rows tr.row .c-name .name').allTextContents();

describe('web portal in chromium', () => {
  let server;
  let alice;
  let bob;
  let api; // alice's "other machine"
  let context;
  let page;
  let profile;
  let mount = null; // alice's drive mounted with jewelfs: her "other machine" with FUSE
  let mountProblem = null;
  const dialogs = [];
  const pageErrors = [];
  const consoleErrors = [];
  const requests = []; // every request the page makes: [url, has Authorization]
  const big = randomBytes(2 * BLOCK + 12345); // three blocks, the last one short

  before(async () => {
    server = await Server.start();
    alice = server.addUser('alice');
    bob = server.addUser('bob');
    assert.notEqual(alice, bob);
    api = server.client(alice);
    mountProblem = process.env.JEWEL_PORTAL_NO_MOUNT ? 'JEWEL_PORTAL_NO_MOUNT is set' : mountUnavailable();
    if (!mountProblem) {
      try {
        mount = await Mount.start(server, alice, 'laptop');
      } catch (e) {
        mountProblem = e;
      }
    }
    profile = mkdtempSync(join(tmpdir(), 'jewel-portal-chromium-'));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ARGS,
      acceptDownloads: true,
      viewport: { width: 1280, height: 800 },
    });
    page = context.pages()[0] || await context.newPage();
    page.on('dialog', (d) => { dialogs.push(`${d.type()}: ${d.message()}`); d.dismiss().catch(() => {}); });
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    context.on('request', (r) => {
      requests.push(r.allHeaders().then((h) => [r.url(), 'authorization' in h], () => [r.url(), false]));
    });
  });

  after(async () => {
    if (context) await context.close();
    if (mount) await mount.stop();
    if (server) await server.stop();
    if (profile) rmSync(profile, { recursive: true, force: true });
  });

  it('serves the page with a strict security policy', async () => {
    const resp = await page.goto(server.url + '/');
    assert.equal(resp.status(), 200);
    const h = resp.headers();
    assert.match(h['content-security-policy'], /default-src 'self'/);
    assert.match(h['content-security-policy'], /script-src 'self'/);
    assert.match(h['content-security-policy'], /frame-ancestors 'none'/);
    assert.doesNotMatch(h['content-security-policy'], /unsafe/);
    assert.equal(h['x-content-type-options'], 'nosniff');
    assert.equal(h['referrer-policy'], 'no-referrer');
    await page.locator('#token').waitFor();
  });

  it('refuses a wrong token and signs in with the right one', async () => {
    await page.fill('#token', 'not-a-token');
    await page.click('#signin-button');
    await page.locator('#signin-error', { hasText: 'not valid' }).waitFor();
    await page.fill('#token', alice);
    await page.click('#signin-button');
    await page.locator('#user', { hasText: 'alice' }).waitFor();
    await page.locator('#live.ok').waitFor();
    const stored = await page.evaluate(() => ({
      session: sessionStorage.getItem('jewel.token'),
      local: JSON.stringify(localStorage),
      cookies: document.cookie,
      url: location.href,
    }));
    assert.equal(stored.session, alice);
    assert.ok(!stored.local.includes(alice), 'the token is not in localStorage');
    assert.equal(stored.cookies, '');
    assert.ok(!stored.url.includes(alice));
  });

  it('uploads through the file picker, block by block, byte-identical', async () => {
    await page.setInputFiles('#file-input', [
      { name: 'big.bin', mimeType: 'application/octet-stream', buffer: big },
      { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('hello from the portal\n') },
    ]);
    await page.locator('#transfer-list li.transfer.up progress').first().waitFor();
    await row(page, 'big.bin').waitFor({ timeout: 30000 });
    await row(page, 'notes.txt').waitFor();
    assert.equal(await page.locator('#transfer-list li.failed').count(), 0, 'no transfer failed');
    const node = await api.child(1, 'big.bin');
    assert.equal(node.size, big.length);
    assert.equal(node.blocks.length, 3);
    assert.equal(node.blocks[0], sha256(big.subarray(0, BLOCK)));
    const back = await api.read(node.id);
    assert.equal(sha256(back), sha256(big), 'read back through the API, byte-identical');
    const notes = await api.child(1, 'notes.txt');
    assert.equal((await api.read(notes.id)).toString(), 'hello from the portal\n');
  });

  // Skips (saying why) only when jewelfs is not built or FUSE is missing; a mount that
  // fails to start fails the test.
  const needMount = (t) => {
    if (mount) return true;
    if (mountProblem instanceof Error) throw mountProblem;
    t.skip(`no FUSE mount: ${mountProblem}`);
    return false;
  };

  it('puts the upload in a FUSE mount of the same user, byte-identical', async (t) => {
    if (!needMount(t)) return;
    const file = join(mount.path, 'big.bin');
    await waitFor('big.bin in the mount', LIVE_MS, () => existsSync(file) && statSync(file).size === big.length);
    assert.equal(sha256(readFileSync(file)), sha256(big));
    assert.equal(readFileSync(join(mount.path, 'notes.txt'), 'utf8'), 'hello from the portal\n');
  });

  it('uploads several files dropped on the page', async () => {
    const dt = await page.evaluateHandle(() => {
      const dt = new DataTransfer();
      dt.items.add(new File(['first dropped file'], 'dropped-1.txt', { type: 'text/plain' }));
      dt.items.add(new File([new Uint8Array(70000).fill(7)], 'dropped-2.dat'));
      return dt;
    });
    await page.dispatchEvent('#drop', 'dragenter', { dataTransfer: dt });
    await page.locator('#drop-hint').waitFor();
    await page.dispatchEvent('#drop', 'drop', { dataTransfer: dt });
    await row(page, 'dropped-1.txt').waitFor();
    await row(page, 'dropped-2.dat').waitFor();
    assert.ok(await page.locator('#drop-hint').isHidden());
    const two = await api.child(1, 'dropped-2.dat');
    assert.deepEqual([...await api.read(two.id)], [...new Uint8Array(70000).fill(7)]);
  });

  it('uploads a whole folder through the folder picker', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'jewel-portal-folder-'));
    try {
      const album = join(tmp, 'album');
      mkdirSync(join(album, 'sub'), { recursive: true });
      writeFileSync(join(album, 'a.txt'), 'in the album');
      writeFileSync(join(album, 'sub', 'b.bin'), Buffer.alloc(5000, 1));
      await page.setInputFiles('#folder-input', album);
      await row(page, 'album').waitFor({ timeout: LIVE_MS });
      const dir = await waitFor('album/sub/b.bin', LIVE_MS, async () => {
        const a = await api.child(1, 'album');
        const sub = a && await api.child(a.id, 'sub');
        return sub && await api.child(sub.id, 'b.bin') ? a : null;
      });
      assert.equal((await api.read((await api.child(dir.id, 'a.txt')).id)).toString(), 'in the album');
      const sub = await api.child(dir.id, 'sub');
      assert.deepEqual(await api.read((await api.child(sub.id, 'b.bin')).id), Buffer.alloc(5000, 1));
      await api.remove(dir);
      await row(page, 'album').waitFor({ state: 'detached', timeout: LIVE_MS });
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('follows changes made on another machine without reloading', async () => {
    await page.evaluate(() => { window.__noReload = 'still here'; });
    const notes = await api.child(1, 'notes.txt');
    await api.rename(notes, 'renamed elsewhere.txt');
    await row(page, 'renamed elsewhere.txt').waitFor({ timeout: LIVE_MS });
    await row(page, 'notes.txt').waitFor({ state: 'detached', timeout: LIVE_MS });

    await api.upload(1, 'from-laptop.txt', Buffer.from('made elsewhere'));
    await row(page, 'from-laptop.txt').waitFor({ timeout: LIVE_MS });

    const gone = await api.child(1, 'from-laptop.txt');
    await api.remove(gone);
    await row(page, 'from-laptop.txt').waitFor({ state: 'detached', timeout: LIVE_MS });

    assert.equal(await page.evaluate(() => window.__noReload), 'still here', 'the page was not reloaded');
  });

  it('follows a rename and a delete made in the FUSE mount without reloading', async (t) => {
    if (!needMount(t)) return;
    await page.evaluate(() => { window.__noReload = 'still here'; });
    const from = join(mount.path, 'dropped-2.dat');
    await waitFor('dropped-2.dat in the mount', LIVE_MS, () => existsSync(from));
    renameSync(from, join(mount.path, 'renamed in mount.dat'));
    await row(page, 'renamed in mount.dat').waitFor({ timeout: LIVE_MS });
    await row(page, 'dropped-2.dat').waitFor({ state: 'detached', timeout: LIVE_MS });
    unlinkSync(join(mount.path, 'renamed in mount.dat'));
    await row(page, 'renamed in mount.dat').waitFor({ state: 'detached', timeout: LIVE_MS });
    assert.equal(await page.evaluate(() => window.__noReload), 'still here', 'the page was not reloaded');
  });

  it('downloads a file with its name and the same bytes', async () => {
    const [download] = await Promise.all([
      page.waitForEvent('download', { timeout: 30000 }),
      row(page, 'big.bin').getByRole('button', { name: 'Download' }).click(),
    ]);
    assert.equal(download.suggestedFilename(), 'big.bin');
    const bytes = readFileSync(await download.path());
    assert.equal(bytes.length, big.length);
    assert.equal(sha256(bytes), sha256(big));
  });

  it('shows a hostile file name as text, and nothing runs', async () => {
    await page.setInputFiles('#file-input', [{ name: HOSTILE, mimeType: 'text/html', buffer: Buffer.from('<script>alert(2)</script>') }]);
    const hostileRow = row(page, HOSTILE);
    await hostileRow.waitFor();
    assert.equal(await hostileRow.locator('.name').textContent(), HOSTILE);
    assert.equal(await page.locator('#rows img').count(), 0, 'no <img> element was made from a name');
    // A folder with the hostile name: breadcrumbs, the rename dialog and the move picker.
    const dir = await api.mkdir(1, `${HOSTILE} dir`);
    await row(page, `${HOSTILE} dir`).waitFor({ timeout: LIVE_MS });
    await row(page, `${HOSTILE} dir`).locator('a.name').click();
    await page.locator('#crumbs [aria-current="page"]', { hasText: `${HOSTILE} dir` }).waitFor();
    assert.equal(await page.locator('#crumbs img').count(), 0);
    await page.goto(server.url + '/#/');
    await page.locator('#user', { hasText: 'alice' }).waitFor();
    await row(page, HOSTILE).getByRole('button', { name: 'Rename' }).click();
    assert.equal(await page.inputValue('#ask-input'), HOSTILE);
    await page.keyboard.press('Escape');
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      row(page, HOSTILE).getByRole('button', { name: 'Download' }).click(),
    ]);
    assert.equal(readFileSync(await download.path()).toString(), '<script>alert(2)</script>');
    await page.waitForTimeout(300);
    assert.deepEqual(dialogs, [], 'no alert, confirm or prompt fired');
    assert.equal(await page.locator('img:not(.logo)').count(), 0);
    await api.remove(dir);
  });

  it('asks before uploading over a taken name: keep both, or replace', async () => {
    await api.upload(1, 'letter.txt', Buffer.from('first letter'));
    await row(page, 'letter.txt').waitFor({ timeout: LIVE_MS });
    await page.setInputFiles('#file-input', [{ name: 'letter.txt', mimeType: 'text/plain', buffer: Buffer.from('second letter') }]);
    await page.locator('#ask-title', { hasText: 'The name is taken' }).waitFor();
    await page.click('#ask-buttons button[data-value="both"]');
    await row(page, 'letter (2).txt').waitFor();
    assert.equal((await api.read((await api.child(1, 'letter (2).txt')).id)).toString(), 'second letter');

    const before = await api.child(1, 'letter.txt');
    await page.setInputFiles('#file-input', [{ name: 'letter.txt', mimeType: 'text/plain', buffer: Buffer.from('replaced letter') }]);
    await page.locator('#ask-title', { hasText: 'The name is taken' }).waitFor();
    await page.click('#ask-buttons button[data-value="replace"]');
    await waitFor('letter.txt to be replaced', LIVE_MS, async () => (await api.child(1, 'letter.txt')).version !== before.version);
    const after = await api.child(1, 'letter.txt');
    assert.equal(after.id, before.id, 'replaced in place, same node');
    assert.equal((await api.read(after.id)).toString(), 'replaced letter');
  });

  it('lists earlier versions of a file, downloads one and restores it', async () => {
    // letter.txt was replaced above: its first content is kept as an earlier version.
    await row(page, 'letter.txt').getByRole('button', { name: 'Versions' }).click();
    const versions = page.locator('#versions-list li.version');
    await versions.first().waitFor();
    assert.equal(await versions.count(), 1);
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      versions.first().getByRole('button', { name: 'Download' }).click(),
    ]);
    assert.match(download.suggestedFilename(), /^letter \(version \d{4}-\d\d-\d\d \d{6}\)\.txt$/);
    assert.equal(readFileSync(await download.path()).toString(), 'first letter');

    const before = await api.child(1, 'letter.txt');
    await versions.first().getByRole('button', { name: 'Restore' }).click();
    await page.locator('#versions').waitFor({ state: 'hidden' });
    await waitFor('letter.txt to be restored', LIVE_MS, async () => (await api.child(1, 'letter.txt')).version !== before.version);
    const after = await api.child(1, 'letter.txt');
    assert.equal(after.id, before.id);
    assert.equal((await api.read(after.id)).toString(), 'first letter');
    // What the restore replaced is a version now too.
    await row(page, 'letter.txt').getByRole('button', { name: 'Versions' }).click();
    await page.locator('#versions-list li.version').nth(1).waitFor();
    assert.equal(await page.locator('#versions-list li.version').count(), 2);
    await page.click('#versions-close');
    await page.locator('#versions').waitFor({ state: 'hidden' });
  });

  it('marks conflict copies', async () => {
    const name = 'report (conflicted copy laptop 2026-11-25 101010).txt';
    await api.upload(1, name, Buffer.from('the other version'));
    await api.upload(1, 'report.txt', Buffer.from('the version that won'));
    await row(page, name).locator('.badge.conflict').waitFor({ timeout: LIVE_MS });
    assert.equal(await row(page, 'report.txt').locator('.badge').count(), 0);
  });

  it('sorts by name, size and date, folders first', async () => {
    await api.mkdir(1, 'zz folder');
    await row(page, 'zz folder').waitFor({ timeout: LIVE_MS });
    let names = await rowNames(page);
    assert.equal(names[0], 'zz folder', 'folders come first');
    await page.click('button.sort[data-sort="size"]');
    names = await rowNames(page);
    const sizes = [];
    for (const n of names.slice(1)) sizes.push((await api.child(1, n)).size);
    assert.deepEqual(sizes, [...sizes].sort((a, b) => a - b), 'ascending by size');
    await page.click('button.sort[data-sort="size"]');
    names = await rowNames(page);
    assert.equal(names[1], 'big.bin', 'descending: the biggest file first');
    await page.click('button.sort[data-sort="name"]');
    assert.equal(await page.getAttribute('th.c-name', 'aria-sort'), 'ascending');
  });

  it('makes a folder, renames and moves with the picker', async () => {
    await page.click('#new-folder');
    await page.fill('#ask-input', 'Projects');
    await page.keyboard.press('Enter');
    await row(page, 'Projects').waitFor();
    const projects = await api.child(1, 'Projects');
    assert.equal(projects.kind, 'dir');

    await row(page, 'dropped-1.txt').getByRole('button', { name: 'Rename' }).click();
    await page.fill('#ask-input', 'bad/name');
    await page.keyboard.press('Enter');
    await page.locator('#ask-error', { hasText: '/' }).waitFor();
    await page.fill('#ask-input', 'plan.txt');
    await page.keyboard.press('Enter');
    await row(page, 'plan.txt').waitFor();

    await row(page, 'plan.txt').getByRole('button', { name: 'Move' }).click();
    await page.locator('#mover-list .mover-item', { hasText: 'Projects' }).click();
    await page.locator('#mover-crumbs .crumb', { hasText: 'Projects' }).waitFor();
    await page.click('#mover-ok');
    await row(page, 'plan.txt').waitFor({ state: 'detached' });
    const moved = await api.child(projects.id, 'plan.txt');
    assert.ok(moved, 'plan.txt is now in Projects');
    assert.equal((await api.read(moved.id)).toString(), 'first dropped file');

    await row(page, 'Projects').locator('a.name').click();
    await row(page, 'plan.txt').waitFor();
    assert.deepEqual(await page.locator('#crumbs .crumb').allTextContents(), ['Files', 'Projects']);
    await page.locator('#crumbs .crumb', { hasText: 'Files' }).click();
    await row(page, 'Projects').waitFor();
  });

  it('stays in the folder it opens while a change lands in the folder it leaves', async () => {
    const projects = await api.child(1, 'Projects');
    // Hold the folder's listing until a change made elsewhere in the top folder has
    // been heard, so the refresh that change asks for runs while the folder opens.
    let release;
    const held = new Promise((r) => { release = r; });
    const listing = new RegExp(`/nodes/${projects.id}/children([?]|$)`);
    await page.route(listing, async (route) => { await held; await route.continue(); });
    try {
      await row(page, 'Projects').locator('a.name').click();
      const refresh = page.waitForRequest(
        (r) => new RegExp(`/nodes/(1|${projects.id})/children([?]|$)`).test(r.url()),
        { timeout: LIVE_MS },
      );
      await api.upload(1, 'while-opening.txt', Buffer.from('made elsewhere meanwhile'));
      await refresh;
    } finally {
      release();
    }
    await row(page, 'plan.txt').waitFor();
    assert.deepEqual(await page.locator('#crumbs .crumb').allTextContents(), ['Files', 'Projects']);
    await page.unroute(listing);
    await page.locator('#crumbs .crumb', { hasText: 'Files' }).click();
    await row(page, 'while-opening.txt').waitFor();
  });

  it('deletes to the trash and restores from it', async () => {
    await row(page, 'renamed elsewhere.txt').getByRole('button', { name: 'Delete' }).click();
    await row(page, 'renamed elsewhere.txt').waitFor({ state: 'detached' });
    assert.equal(await api.child(1, 'renamed elsewhere.txt'), undefined);
    await page.click('#nav-trash');
    await trashRow(page, 'renamed elsewhere.txt').waitFor();
    assert.equal(await trashRow(page, 'renamed elsewhere.txt').locator('.origin').textContent(), 'from Files');
    await trashRow(page, 'renamed elsewhere.txt').getByRole('button', { name: 'Restore' }).click();
    await trashRow(page, 'renamed elsewhere.txt').waitFor({ state: 'detached' });
    await page.click('#nav-files');
    await row(page, 'renamed elsewhere.txt').waitFor();
    const back = await api.child(1, 'renamed elsewhere.txt');
    assert.equal((await api.read(back.id)).toString(), 'hello from the portal\n');
  });

  it('fits a phone-sized screen', async () => {
    await page.setViewportSize({ width: 375, height: 740 });
    await row(page, 'big.bin').waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `no sideways scrolling (overflow ${overflow}px)`);
    assert.ok(await page.locator('#listing th.c-size').isHidden(), 'size column folds into the name cell');
    assert.ok(await row(page, 'big.bin').locator('.meta').isVisible());
    assert.ok(await row(page, 'big.bin').getByRole('button', { name: 'Delete' }).isVisible());
    mkdirSync(join(repoRoot, 'docs'), { recursive: true });
    await page.screenshot({ path: join(tmpdir(), 'jewel-portal-phone.png') });
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  it('saves a screenshot of the main view', async () => {
    await page.evaluate(() => {
      document.getElementById('transfers').hidden = true;
      document.getElementById('toasts').replaceChildren();
    });
    // A few everyday files, so the picture shows the icons by kind.
    const photos = await api.mkdir(1, 'Photos');
    await api.upload(photos.id, 'beach.jpg', randomBytes(1000));
    for (const [name, size] of [['holiday.jpg', 2400000], ['budget-2026.xlsx', 48000],
      ['song.mp3', 5100000], ['backup.tar.gz', 1300000], ['main.rs', 3100]]) {
      await api.upload(1, name, randomBytes(size));
    }
    await row(page, 'main.rs').waitFor({ timeout: LIVE_MS });
    if (await page.getAttribute('#listing th.c-name', 'aria-sort') !== 'ascending') {
      await page.click('button.sort[data-sort="name"]');
    }
    assert.equal(await page.getAttribute('#listing th.c-name', 'aria-sort'), 'ascending');
    await page.mouse.move(0, 0);
    // The picture in the docs is replaced only on request (JEWEL_UPDATE_SCREENSHOT=1), so
    // that a test run leaves the checkout as it found it.
    const dir = process.env.JEWEL_UPDATE_SCREENSHOT ? join(repoRoot, 'docs') : tmpdir();
    mkdirSync(dir, { recursive: true });
    await page.screenshot({ path: join(dir, 'portal.png') });
    assert.ok(statSync(join(dir, 'portal.png')).size > 10000, 'a real picture');
  });

  it('never shows one user\'s files to another', async () => {
    const bobApi = server.client(bob);
    assert.deepEqual(await bobApi.list(1), [], "bob's root is empty");
    const big1 = await api.child(1, 'big.bin');
    await assert.rejects(bobApi.call('GET', `/nodes/${big1.id}`), (e) => e.status === 404 || e.status === 403);
    const other = await context.newPage();
    try {
      await other.goto(server.url + '/');
      // sessionStorage is per tab: a new tab starts signed out.
      await other.locator('#token').waitFor();
      await other.fill('#token', bob);
      await other.click('#signin-button');
      await other.locator('#user', { hasText: 'bob' }).waitFor();
      await other.locator('#empty').waitFor();
      assert.equal(await other.locator('#rows tr').count(), 0);
      await other.click('#nav-trash');
      await other.locator('#trash-empty').waitFor();
      await other.goto(`${server.url}/#/f/${(await api.child(1, 'Projects')).id}`);
      await other.locator('#user', { hasText: 'bob' }).waitFor();
      await waitFor('the foreign folder to be refused', 5000, async () => (await other.locator('#rows tr').count()) === 0);
      assert.equal(await other.locator('#rows tr').count(), 0);
    } finally {
      await other.close();
    }
  });

  it('signs out and forgets the token', async () => {
    await page.click('#signout');
    await page.locator('#token').waitFor();
    assert.ok(await page.locator('#app').isHidden());
    assert.equal(await page.evaluate(() => sessionStorage.getItem('jewel.token')), null);
    assert.equal(await page.locator('#rows tr').count(), 0, 'the listing is cleared');
    await page.reload();
    await page.locator('#token').waitFor();
    assert.ok(await page.locator('#app').isHidden(), 'still signed out after a reload');
  });

  it('sent the token only to the API of its own origin, and nothing elsewhere', async () => {
    const seen = await Promise.all(requests);
    assert.ok(seen.length > 20, 'requests were recorded');
    for (const [url, auth] of seen) {
      assert.ok(url.startsWith(server.url + '/') || url.startsWith('blob:') || url.startsWith('data:'), `request to ${url}`);
      if (auth) assert.ok(url.startsWith(server.url + '/api/v1/'), `token sent with ${url}`);
    }
    const blockRequests = seen.filter(([url]) => url.startsWith(server.url + '/blob/'));
    assert.ok(blockRequests.length >= 3, 'blocks moved through their signed URLs');
    assert.ok(blockRequests.every(([, auth]) => !auth), 'no token on block URLs');
  });

  it('raised no script errors and no policy violations', () => {
    assert.deepEqual(pageErrors, []);
    const csp = consoleErrors.filter((m) => /Content Security Policy|Refused to/i.test(m));
    assert.deepEqual(csp, []);
    assert.deepEqual(dialogs, []);
  });
});
