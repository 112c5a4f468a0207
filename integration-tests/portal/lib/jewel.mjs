// Helpers for the portal tests: a real jewel-server process on a free loopback port with its
// own data folder, its users, and a small API client (standing in for "another machine").

import { spawn, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, existsSync, readFileSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, '../../..');
export const BLOCK = 4 * 1024 * 1024;

/** Path of a workspace binary (debug profile), honouring CARGO_TARGET_DIR. */
export function bin(name) {
  const target = process.env.CARGO_TARGET_DIR || join(repoRoot, 'target');
  const path = join(target, 'debug', name);
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: run \`cargo build --workspace --bins\` (make test does) first`);
  }
  return path;
}

export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns a truthy value or `ms` pass. */
export async function waitFor(what, ms, check) {
  const start = Date.now();
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() - start > ms) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    }
    await sleep(50);
  }
}

export const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');

/** A real `jewel-server serve`, killed by stop(). */
export class Server {
  static async start() {
    const data = mkdtempSync(join(tmpdir(), 'jewel-portal-data-'));
    const port = await freePort();
    const addr = `127.0.0.1:${port}`;
    // JEWEL_SERVER may name another build of the server to test (the admin commands still
    // come from target/debug/jewel-server).
    const child = spawn(process.env.JEWEL_SERVER || bin('jewel-server'), ['serve', '--data', data, '--listen', addr], {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const server = new Server(child, data, `http://${addr}`);
    let exited = null;
    child.on('exit', (code, signal) => { exited = { code, signal }; });
    await waitFor('jewel-server to answer', 20000, async () => {
      if (exited) throw new Error(`jewel-server exited early: ${JSON.stringify(exited)}`);
      const r = await fetch(`${server.url}/api/v1/health`);
      return r.ok;
    });
    return server;
  }

  constructor(child, data, url) {
    this.child = child;
    this.data = data;
    this.url = url;
  }

  /** `jewel-server user add NAME --data DIR`; the token is the last line of its output. */
  addUser(name) {
    const out = execFileSync(bin('jewel-server'), ['user', 'add', name, '--data', this.data], { encoding: 'utf8' });
    const lines = out.trim().split('\n');
    return lines[lines.length - 1].trim();
  }

  client(token) {
    return new Client(this.url, token);
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const gone = new Promise((r) => this.child.once('exit', r));
      this.child.kill('SIGTERM');
      await Promise.race([gone, sleep(5000)]);
      if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    }
    rmSync(this.data, { recursive: true, force: true });
  }
}

export class ApiError extends Error {
  constructor(status, body) {
    super(`HTTP ${status}: ${JSON.stringify(body)}`);
    this.status = status;
    this.code = body && body.code;
    this.body = body;
  }
}

/** The JSON API as another machine of the same user would use it. */
export class Client {
  constructor(base, token) {
    this.base = base;
    this.token = token;
  }

  async call(method, path, body) {
    const headers = { authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const r = await fetch(`${this.base}/api/v1${path}`, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    const data = text ? JSON.parse(text) : null;
    if (!r.ok) throw new ApiError(r.status, data);
    return data;
  }

  async list(id = 1) {
    const out = [];
    let after = null;
    for (;;) {
      const q = after === null ? '' : `?after=${encodeURIComponent(after)}`;
      const page = await this.call('GET', `/nodes/${id}/children${q}`);
      out.push(...page.entries);
      if (page.next === null || page.next === undefined) return out;
      after = page.next;
    }
  }

  async child(parent, name) {
    return (await this.list(parent)).find((n) => n.name === name);
  }

  /** Uploads bytes as a new file the way every client does: missing blocks, PUTs, commit. */
  async upload(parent, name, bytes) {
    const blocks = [];
    for (let off = 0; off < bytes.length; off += BLOCK) blocks.push(bytes.subarray(off, off + BLOCK));
    const hashes = blocks.map(sha256);
    if (hashes.length) {
      const { missing } = await this.call('POST', '/blocks/missing', { hashes: [...new Set(hashes)] });
      for (const m of missing) {
        const r = await fetch(new URL(m.url, this.base), {
          method: 'PUT', body: blocks[hashes.indexOf(m.hash)], headers: { 'content-type': 'application/octet-stream' },
        });
        if (!r.ok) throw new Error(`block PUT: HTTP ${r.status}`);
      }
    }
    return this.call('POST', '/nodes', { parent, name, kind: 'file', content: { size: bytes.length, blocks: hashes } });
  }

  /** Reads a file's bytes through the block URLs. */
  async read(id) {
    const node = await this.call('GET', `/nodes/${id}`);
    const hashes = node.blocks || [];
    if (!hashes.length) return Buffer.alloc(0);
    const { urls } = await this.call('POST', '/blocks/urls', { hashes: [...new Set(hashes)] });
    const byHash = new Map(urls.map((u) => [u.hash, u.url]));
    const parts = [];
    for (const h of hashes) {
      const r = await fetch(new URL(byHash.get(h), this.base));
      if (!r.ok) throw new Error(`block GET: HTTP ${r.status}`);
      parts.push(Buffer.from(await r.arrayBuffer()));
    }
    return Buffer.concat(parts);
  }

  rename(node, newName, newParent = node.parent) {
    return this.call('POST', `/nodes/${node.id}/move`, {
      base_version: node.version, new_parent: newParent, new_name: newName, mode: 'no_replace',
    });
  }

  remove(node) {
    return this.call('DELETE', `/nodes/${node.id}?recursive=true`);
  }

  mkdir(parent, name) {
    return this.call('POST', '/nodes', { parent, name, kind: 'dir' });
  }
}

/** Whether `path` is a mount point now (per /proc/self/mountinfo). */
export function isMounted(path) {
  const info = readFileSync('/proc/self/mountinfo', 'utf8');
  return info.split('\n').some((line) => line.split(' ')[4] === path);
}

/** Why a FUSE mount cannot be tried here, or null when it can. */
export function mountUnavailable() {
  const target = process.env.CARGO_TARGET_DIR || join(repoRoot, 'target');
  if (!existsSync(join(target, 'debug', 'jewelfs'))) return 'target/debug/jewelfs is not built';
  if (!existsSync('/dev/fuse')) return '/dev/fuse is missing';
  return null;
}

/** A real `jewelfs mount` of one user's drive, in the foreground, unmounted by stop(). */
export class Mount {
  static async start(server, token, device) {
    const dir = mkdtempSync(join(tmpdir(), 'jewel-portal-mount-'));
    const path = join(dir, 'mnt');
    const cache = join(dir, 'cache');
    mkdirSync(path);
    const child = spawn(bin('jewelfs'), ['mount', path, '--server', server.url, '--cache-dir', cache, '--device', device], {
      env: { ...process.env, JEWEL_TOKEN: token, JEWEL_LOG: process.env.JEWEL_LOG || 'warn' },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    let exited = null;
    child.on('exit', (code, signal) => { exited = { code, signal }; });
    const mount = new Mount(child, dir, path);
    try {
      await waitFor('jewelfs to mount', 20000, () => {
        if (exited) throw new Error(`jewelfs exited early: ${JSON.stringify(exited)}`);
        if (!isMounted(path)) return false;
        // Ready once its first listing is in (as `jewelfs status --json` says).
        const out = execFileSync(bin('jewelfs'), ['status', path, '--json'], { encoding: 'utf8', timeout: 5000 });
        return JSON.parse(out).ready !== false;
      });
    } catch (e) {
      await mount.stop();
      throw e;
    }
    return mount;
  }

  constructor(child, dir, path) {
    this.child = child;
    this.dir = dir;
    this.path = path;
  }

  async stop() {
    if (isMounted(this.path)) {
      try {
        execFileSync(bin('jewelfs'), ['unmount', this.path, '--wait', '30'], { stdio: 'inherit', timeout: 40000 });
      } catch (_) {
        try { execFileSync('fusermount3', ['-u', '-z', this.path]); } catch (_) { /* best effort */ }
      }
    }
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const gone = new Promise((r) => this.child.once('exit', r));
      await Promise.race([gone, sleep(5000)]);
      if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    }
    if (!isMounted(this.path)) rmSync(this.dir, { recursive: true, force: true });
  }
}
