// JewelFS web portal. Plain JavaScript, no framework, nothing loaded from elsewhere.
//
// Rules this file keeps:
// - Every name from the service reaches the page through textContent or an attribute value,
//   never as markup (the page's CSP forbids inline script as a second wall).
// - The token lives in sessionStorage and goes only into the Authorization header of
//   same-origin API calls (paths under /api/v1). Block URLs are signed and get no token.
// - Uploads go block by block (4 MiB, SHA-256 named) straight to the block store, and only
//   the blocks the store lacks are sent; then one metadata commit names them.
// - Downloads fetch each block, check its SHA-256, and save the assembled Blob through an
//   <a download> link, so the content is never rendered in this origin.
// - Changes made elsewhere arrive through the change feed (polled), and the open view
//   re-lists when an event touches it.
'use strict';

(() => {
  const API = '/api/v1';
  const ROOT = 1;
  const BLOCK = 4 * 1024 * 1024;
  const URL_BATCH = 16; // block URLs are short-lived: ask for a few at a time
  const POLL_MS = 1000;
  const POLL_HIDDEN_MS = 5000;
  const TOKEN_KEY = 'jewel.token';
  const SORT_KEY = 'jewel.sort';
  const CONFLICT_MARK = '(conflicted copy ';

  const $ = (id) => document.getElementById(id);
  const el = (tag, props, ...children) => {
    const node = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'class') node.className = v;
        else if (k === 'text') node.textContent = v;
        else if (k === 'dataset') Object.assign(node.dataset, v);
        else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
        else node.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const child of children) if (child) node.append(child);
    return node;
  };

  // ---------------------------------------------------------------- icons (inline SVG)
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const ICONS = {
    folder: [['#f0b43c', 'M2 6.5A2.5 2.5 0 0 1 4.5 4h4.2l2 2.2h8.8A2.5 2.5 0 0 1 22 8.7v9.8a2.5 2.5 0 0 1-2.5 2.5h-15A2.5 2.5 0 0 1 2 18.5z'],
      ['#f7cd6b', 'M2 9.5h20v9a2.5 2.5 0 0 1-2.5 2.5h-15A2.5 2.5 0 0 1 2 18.5z']],
    symlink: [['#8a94a6', 'M6 2h8l6 6v12a2 2 0 0 1-2 2H6a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2z'],
      ['#fff', 'M8 15.5c0-3 2-4.5 5-4.5V9l4 3.5-4 3.5v-2c-2 0-3.5.5-5 1.5z']],
    download: [[null, 'M12 3v11m0 0-4.5-4.5M12 14l4.5-4.5M4 17v2.5A1.5 1.5 0 0 0 5.5 21h13a1.5 1.5 0 0 0 1.5-1.5V17']],
    rename: [[null, 'M4 20h4L19 9l-4-4L4 16zM13.5 6.5l4 4']],
    move: [[null, 'M3 7a2 2 0 0 1 2-2h4l2 2h8a2 2 0 0 1 2 2v9a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2zM10 13.5h6m-2.5-2.5 2.5 2.5-2.5 2.5']],
    trash: [[null, 'M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13M10 11v6m4-6v6']],
    restore: [[null, 'M4 12a8 8 0 1 0 2.4-5.7M4 4v4.5h4.5']],
    history: [[null, 'M12 7v5l3 2M3.5 12a8.5 8.5 0 1 0 2.5-6M3 4v4.5h4.5']],
  };
  // File icon colours by kind of content, guessed from the extension.
  const FILE_KINDS = [
    ['image', '#2e9e6a', /\.(png|jpe?g|gif|webp|bmp|svg|heic|tiff?|ico|raw|avif)$/i],
    ['video', '#d9534f', /\.(mp4|mkv|mov|avi|webm|m4v|wmv)$/i],
    ['audio', '#c05bc7', /\.(mp3|wav|flac|ogg|m4a|aac|opus)$/i],
    ['pdf', '#e0433a', /\.pdf$/i],
    ['archive', '#9b6a3c', /\.(zip|tar|gz|tgz|bz2|xz|zst|7z|rar|iso|dmg)$/i],
    ['code', '#3b7dd8', /\.(rs|js|ts|py|go|c|h|cpp|java|rb|sh|json|toml|ya?ml|html|css|xml|sql|md)$/i],
    ['document', '#2f6fca', /\.(txt|docx?|odt|rtf|pages|xlsx?|ods|csv|pptx?|odp|key)$/i],
  ];

  function fileKind(name) {
    for (const [kind, color, re] of FILE_KINDS) if (re.test(name)) return [kind, color];
    return ['file', '#8a94a6'];
  }

  function svg(name, opts = {}) {
    const s = document.createElementNS(SVG_NS, 'svg');
    s.setAttribute('viewBox', '0 0 24 24');
    s.setAttribute('aria-hidden', 'true');
    s.setAttribute('focusable', 'false');
    s.setAttribute('class', 'icon ' + (opts.cls || ''));
    let paths = ICONS[name];
    if (!paths) {
      const color = opts.color || '#8a94a6';
      paths = [[color, 'M6 2h8l6 6v12a2 2 0 0 1-2 2H6a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2z'],
        ['rgba(255,255,255,.55)', 'M14 2v6h6z']];
    }
    for (const [fill, d] of paths) {
      const p = document.createElementNS(SVG_NS, 'path');
      p.setAttribute('d', d);
      if (fill) p.setAttribute('fill', fill);
      else p.setAttribute('class', 'stroke');
      s.append(p);
    }
    return s;
  }

  function nodeIcon(node) {
    if (node.kind === 'dir') return svg('folder', { cls: 'kind-dir' });
    if (node.kind === 'symlink') return svg('symlink', { cls: 'kind-symlink' });
    const [kind, color] = fileKind(node.name);
    return svg('file', { cls: 'kind-' + kind, color });
  }

  // ---------------------------------------------------------------- formatting
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });
  const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

  function fmtSize(n) {
    if (n < 1024) return `${n} B`;
    const units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let v = n / 1024;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
  }

  function fmtDate(ns) {
    if (!ns) return '';
    return dateFmt.format(new Date(Math.floor(ns / 1e6)));
  }

  const isConflictCopy = (name) => name.includes(CONFLICT_MARK);

  // Same rules as the service's check_name, so the user hears about a bad name at once.
  function nameProblem(name) {
    if (!name) return 'A name cannot be empty.';
    if (name === '.' || name === '..') return 'A name cannot be "." or "..".';
    if (name.includes('/')) return 'A name cannot contain "/".';
    if (name.includes('\0')) return 'A name cannot contain NUL.';
    const bytes = new TextEncoder().encode(name).length;
    if (bytes > 255) return `A name is at most 255 bytes; this one has ${bytes}.`;
    return null;
  }

  // ---------------------------------------------------------------- state
  const state = {
    token: null,
    me: null,
    gen: 0, // bumped at sign-out: loops and loads of an older session stop
    view: 'files',
    folder: ROOT, // the folder on screen
    opening: ROOT, // the folder asked for last; on screen once its listing arrives
    path: [], // nodes from the root's first child down to the current folder
    entries: [],
    trash: [],
    devices: [],
    linkCode: null, // the code found and shown, waiting for Approve
    sort: loadSort(),
    cursor: 0,
    loadSeq: 0,
    refreshTimer: 0,
  };

  function loadSort() {
    try {
      const s = JSON.parse(localStorage.getItem(SORT_KEY));
      if (s && ['name', 'size', 'date'].includes(s.key) && (s.dir === 1 || s.dir === -1)) return s;
    } catch (_) { /* ignore a bad saved value */ }
    return { key: 'name', dir: 1 };
  }

  // ---------------------------------------------------------------- the API
  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `The service answered HTTP ${status}.`);
      this.status = status;
      this.code = (body && body.code) || 'http_' + status;
      this.current = body && body.current;
    }
  }

  async function api(method, path, body) {
    if (!path.startsWith('/')) throw new Error('API paths are relative');
    const gen = state.gen;
    const headers = { Authorization: 'Bearer ' + state.token, Accept: 'application/json' };
    const init = { method, headers, credentials: 'omit', cache: 'no-store', referrerPolicy: 'no-referrer' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(API + path, init);
    } catch (e) {
      throw new ApiError(0, { code: 'network', message: 'The service cannot be reached.' });
    }
    let data = null;
    const text = await resp.text();
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = null; }
    }
    if (!resp.ok) {
      const err = new ApiError(resp.status, data);
      if (resp.status === 401 && state.me && gen === state.gen) sessionEnded();
      throw err;
    }
    return data;
  }

  // A block URL from the service: relative to this origin or absolute (S3). Only http(s).
  function blockUrl(url) {
    const u = new URL(url, location.origin);
    if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new Error('bad block URL');
    return u;
  }

  async function sha256Hex(buf) {
    const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', buf));
    let hex = '';
    for (const b of digest) hex += b.toString(16).padStart(2, '0');
    return hex;
  }

  // ---------------------------------------------------------------- sign in / out
  async function signIn(token, quiet) {
    const error = $('signin-error');
    error.textContent = '';
    state.token = token;
    try {
      state.me = await api('GET', '/me');
    } catch (e) {
      state.token = null;
      state.me = null;
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn();
      if (!quiet || e.status !== 401) {
        error.textContent = e.status === 401
          ? 'That token is not valid. Check it and try again.'
          : `Cannot sign in: ${e.message}`;
      }
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $('token').value = '';
    state.cursor = state.me.latest_seq || 0;
    $('user').textContent = state.me.user;
    $('signin').hidden = true;
    $('app').hidden = false;
    const gen = state.gen;
    pollLoop(gen);
    route();
  }

  function showSignIn() {
    $('app').hidden = true;
    $('signin').hidden = false;
    $('token').focus();
  }

  function signOut(message) {
    state.gen++;
    state.token = null;
    state.me = null;
    state.entries = [];
    state.trash = [];
    state.path = [];
    sessionStorage.removeItem(TOKEN_KEY);
    $('rows').replaceChildren();
    $('trash-rows').replaceChildren();
    $('device-rows').replaceChildren();
    state.devices = [];
    resetLinkForm();
    $('crumbs').replaceChildren();
    $('transfer-list').replaceChildren();
    $('transfers').hidden = true;
    $('toasts').replaceChildren();
    $('user').textContent = '';
    for (const d of document.querySelectorAll('dialog[open]')) d.close();
    if (location.hash) history.replaceState(null, '', location.pathname);
    showSignIn();
    $('signin-error').textContent = message || '';
  }

  function sessionEnded() {
    signOut('Your token is no longer accepted. Sign in again.');
  }

  // ---------------------------------------------------------------- routing
  function route() {
    if (!state.me) return;
    const hash = location.hash || '#/';
    const folder = /^#\/f\/(\d+)$/.exec(hash);
    const link = /^#\/link\/([A-Za-z0-9 -]{1,16})$/.exec(hash);
    if (hash === '#/trash') {
      showView('trash');
      loadTrash();
    } else if (hash === '#/devices' || link) {
      showView('devices');
      loadDevices();
      if (link) findLink(decodeURIComponent(link[1]));
    } else {
      showView('files');
      openFolder(folder ? Number(folder[1]) : ROOT);
    }
  }

  function showView(view) {
    state.view = view;
    $('files-view').hidden = view !== 'files';
    $('trash-view').hidden = view !== 'trash';
    $('devices-view').hidden = view !== 'devices';
    for (const v of ['files', 'trash', 'devices']) {
      $('nav-' + v).classList.toggle('active', view === v);
      $('nav-' + v).setAttribute('aria-current', view === v ? 'page' : 'false');
    }
  }

  const folderHref = (id) => (id === ROOT ? '#/' : `#/f/${id}`);

  function go(id) {
    const href = folderHref(id);
    if (location.hash === href || (!location.hash && id === ROOT)) route();
    else location.hash = href;
  }

  // ---------------------------------------------------------------- listing
  async function listAll(id) {
    return allPages(`/nodes/${id}/children`, 'after', 'entries');
  }

  // Every page of a paged route (the service cuts pages by count and by bytes): follows
  // `next`, passed back as the query parameter `param`, and gathers each page's `field`.
  async function allPages(path, param, field) {
    const items = [];
    let cursor = null;
    for (let i = 0; i < 10000; i++) {
      const q = cursor === null ? '' : `?${param}=${encodeURIComponent(cursor)}`;
      const page = await api('GET', `${path}${q}`);
      items.push(...page[field]);
      if (page.next === null || page.next === undefined) break;
      cursor = page.next;
    }
    return items;
  }

  async function pathTo(id) {
    const path = [];
    let cur = id;
    for (let depth = 0; cur !== ROOT && depth < 256; depth++) {
      const node = await api('GET', `/nodes/${cur}`);
      if (node.kind !== 'dir') throw new ApiError(400, { code: 'not_a_directory', message: 'That is not a folder.' });
      path.unshift(node);
      if (node.parent === cur) break;
      cur = node.parent;
    }
    return path;
  }

  async function openFolder(id) {
    const seq = ++state.loadSeq;
    const gen = state.gen;
    // The folder the user asked for last: a refresh while its listing is on the way
    // re-lists it, not the folder still on screen (which would win the race and undo
    // the navigation).
    state.opening = id;
    try {
      const [path, entries] = await Promise.all([pathTo(id), listAll(id)]);
      if (seq !== state.loadSeq || gen !== state.gen) return;
      state.folder = id;
      state.path = path;
      state.entries = entries;
      renderCrumbs();
      renderRows();
    } catch (e) {
      if (seq !== state.loadSeq || gen !== state.gen) return;
      if (e.status === 404 || e.code === 'not_a_directory') {
        if (id !== ROOT) {
          toast('That folder is gone (moved to the trash, perhaps). Showing the top folder.');
          go(ROOT);
        }
      } else if (e.status !== 401) {
        toast(`Cannot list the folder: ${e.message}`, { error: true });
      }
    }
  }

  function refreshSoon() {
    clearTimeout(state.refreshTimer);
    state.refreshTimer = setTimeout(() => {
      if (!state.me) return;
      if (state.view === 'files') openFolder(state.opening);
      else if (state.view === 'trash') loadTrash();
      else loadDevices();
    }, 120);
  }

  function renderCrumbs() {
    const crumbs = $('crumbs');
    const items = [el('a', { href: '#/', class: 'crumb', text: 'Files' })];
    for (const node of state.path) {
      items.push(el('span', { class: 'sep', 'aria-hidden': 'true', text: '/' }));
      items.push(el('a', { href: folderHref(node.id), class: 'crumb', text: node.name }));
    }
    items[items.length - 1].setAttribute('aria-current', 'page');
    crumbs.replaceChildren(...items);
    document.title = state.path.length ? `${state.path[state.path.length - 1].name} · JewelFS` : 'JewelFS';
  }

  function sorted(entries) {
    const { key, dir } = state.sort;
    const cmp = (a, b) => {
      if ((a.kind === 'dir') !== (b.kind === 'dir')) return a.kind === 'dir' ? -1 : 1;
      let r = 0;
      if (key === 'size') r = a.size - b.size;
      else if (key === 'date') r = a.mtime_ns - b.mtime_ns;
      if (r === 0) r = collator.compare(a.name, b.name);
      if (r === 0) r = a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
      return r * dir;
    };
    return [...entries].sort(cmp);
  }

  function renderSortHeaders() {
    for (const btn of document.querySelectorAll('button.sort')) {
      const th = btn.parentElement;
      if (btn.dataset.sort === state.sort.key) {
        th.setAttribute('aria-sort', state.sort.dir === 1 ? 'ascending' : 'descending');
      } else {
        th.removeAttribute('aria-sort');
      }
    }
  }

  function actionButton(icon, label, handler) {
    const b = el('button', { type: 'button', class: 'act', title: label, 'aria-label': label, onclick: handler });
    b.append(svg(icon, { cls: 'act-icon' }));
    return b;
  }

  function renderRows() {
    renderSortHeaders();
    const rows = sorted(state.entries).map((node) => {
      const conflict = node.kind === 'file' && isConflictCopy(node.name);
      const nameCell = el('td', { class: 'c-name' });
      let label;
      if (node.kind === 'dir') {
        label = el('a', { href: folderHref(node.id), class: 'name', text: node.name });
      } else if (node.kind === 'file') {
        label = el('button', { type: 'button', class: 'name link', text: node.name, title: 'Download', onclick: () => download(node) });
      } else {
        label = el('span', { class: 'name', text: node.name, title: `Link to ${node.target || ''}` });
      }
      nameCell.append(label);
      if (conflict) {
        nameCell.append(el('span', {
          class: 'badge conflict',
          text: 'conflict',
          title: 'A conflicted copy: this file was changed on two machines at once and both versions were kept. Compare it with the original and delete the one you do not need.',
        }));
      }
      if (node.kind === 'symlink' && node.target) {
        nameCell.append(el('span', { class: 'target', text: '→ ' + node.target }));
      }
      const meta = node.kind === 'dir' ? fmtDate(node.mtime_ns) : `${fmtSize(node.size)} · ${fmtDate(node.mtime_ns)}`;
      nameCell.append(el('span', { class: 'meta', text: meta }));
      const actions = el('td', { class: 'c-actions' });
      if (node.kind === 'file') {
        actions.append(
          actionButton('download', 'Download', () => download(node)),
          actionButton('history', 'Versions', () => showVersions(node)),
        );
      }
      actions.append(
        actionButton('rename', 'Rename', () => renameNode(node)),
        actionButton('move', 'Move', () => moveNode(node)),
        actionButton('trash', 'Delete', () => deleteNode(node)),
      );
      return el('tr', { class: 'row' + (conflict ? ' is-conflict' : ''), dataset: { id: String(node.id), kind: node.kind } },
        el('td', { class: 'c-icon' }, nodeIcon(node)),
        nameCell,
        el('td', { class: 'c-size', text: node.kind === 'dir' ? '—' : fmtSize(node.size) }),
        el('td', { class: 'c-date', text: fmtDate(node.mtime_ns) }),
        actions);
    });
    $('rows').replaceChildren(...rows);
    $('empty').hidden = rows.length > 0;
  }

  // ---------------------------------------------------------------- dialogs and toasts
  // A small modal: a title, a text, an optional input, and buttons. Resolves to
  // { button, value } or null when dismissed. `check(value, button)` may return an error
  // text (kept open) or a promise of one (for server-side checks).
  function ask({ title, text, input, value = '', selectStem = false, buttons, check }) {
    const dialog = $('ask');
    $('ask-title').textContent = title;
    $('ask-text').textContent = text || '';
    $('ask-text').hidden = !text;
    const field = $('ask-input');
    field.hidden = !input;
    field.value = value;
    field.setAttribute('aria-label', input || title);
    $('ask-error').textContent = '';
    return new Promise((resolve) => {
      let done = false;
      const finish = (result) => {
        if (done) return;
        done = true;
        dialog.removeEventListener('cancel', onCancel);
        if (dialog.open) dialog.close();
        resolve(result);
      };
      const onCancel = (e) => { e.preventDefault(); finish(null); };
      const press = async (b) => {
        if (b.cancel) return finish(null);
        const v = field.value;
        if (check) {
          for (const btn of $('ask-buttons').children) btn.disabled = true;
          let problem = null;
          try { problem = await check(v, b.value); } catch (e) { problem = e.message; }
          for (const btn of $('ask-buttons').children) btn.disabled = false;
          if (problem) {
            $('ask-error').textContent = problem;
            field.focus();
            return;
          }
        }
        finish({ button: b.value, value: v });
      };
      const btns = buttons.map((b) => el('button', {
        type: 'button',
        class: b.primary ? 'primary' : 'ghost',
        text: b.label,
        dataset: { value: b.value || '' },
        onclick: () => press(b),
      }));
      $('ask-buttons').replaceChildren(...btns);
      $('ask-form').onsubmit = (e) => {
        e.preventDefault();
        const primary = buttons.find((b) => b.primary);
        if (primary) press(primary);
      };
      dialog.addEventListener('cancel', onCancel);
      dialog.showModal();
      if (input) {
        field.focus();
        const dot = value.lastIndexOf('.');
        if (selectStem && dot > 0) field.setSelectionRange(0, dot);
        else field.select();
      } else {
        const primary = btns.find((b) => b.classList.contains('primary'));
        if (primary) primary.focus();
      }
    });
  }

  function toast(text, opts = {}) {
    const t = el('div', { class: 'toast' + (opts.error ? ' error' : ''), role: opts.error ? 'alert' : 'status' },
      el('span', { text }));
    if (opts.action) {
      t.append(el('button', {
        type: 'button',
        class: 'ghost small',
        text: opts.action.label,
        onclick: () => { t.remove(); opts.action.run(); },
      }));
    }
    t.append(el('button', { type: 'button', class: 'close', 'aria-label': 'Dismiss', text: '×', onclick: () => t.remove() }));
    $('toasts').append(t);
    setTimeout(() => t.remove(), opts.error ? 10000 : 6000);
  }

  function explain(e) {
    switch (e.code) {
      case 'exists': return 'That name is already taken in this folder.';
      case 'conflict': return 'It was changed on another machine just now; have a look and try again.';
      case 'invalid_name': return e.message;
      case 'not_found': return 'It is gone: perhaps it was moved or deleted elsewhere.';
      default: return e.message;
    }
  }

  // ---------------------------------------------------------------- organize
  async function newFolder() {
    const parent = state.folder;
    const r = await ask({
      title: 'New folder',
      input: 'Folder name',
      value: 'New folder',
      buttons: [{ label: 'Cancel', cancel: true }, { label: 'Create', value: 'create', primary: true }],
      check: async (name) => {
        const problem = nameProblem(name);
        if (problem) return problem;
        try {
          await api('POST', '/nodes', { parent, name, kind: 'dir' });
        } catch (e) {
          return explain(e);
        }
        return null;
      },
    });
    if (r) refreshSoon();
  }

  async function renameNode(node) {
    const r = await ask({
      title: 'Rename',
      input: 'New name',
      value: node.name,
      selectStem: node.kind !== 'dir',
      buttons: [{ label: 'Cancel', cancel: true }, { label: 'Rename', value: 'rename', primary: true }],
      check: async (name) => {
        const problem = nameProblem(name);
        if (problem) return problem;
        if (name === node.name) return null;
        try {
          await api('POST', `/nodes/${node.id}/move`, {
            base_version: node.version, new_parent: node.parent, new_name: name, mode: 'no_replace',
          });
        } catch (e) {
          if (e.code === 'conflict') refreshSoon();
          return explain(e);
        }
        return null;
      },
    });
    if (r) refreshSoon();
  }

  async function deleteNode(node) {
    try {
      await api('DELETE', `/nodes/${node.id}?recursive=true&base_version=${node.version}`);
    } catch (e) {
      toast(`Cannot delete “${node.name}”: ${explain(e)}`, { error: true });
      refreshSoon();
      return;
    }
    refreshSoon();
    toast(`“${node.name}” moved to the trash.`, { action: { label: 'Undo', run: () => restore(node.id) } });
  }

  async function restore(id) {
    try {
      const node = await api('POST', `/trash/${id}/restore`);
      toast(`Restored “${node.name}”.`);
    } catch (e) {
      toast(`Cannot restore: ${explain(e)}`, { error: true });
    }
    refreshSoon();
  }

  // The "move to folder" picker: walk folders, then "Move here".
  function moveNode(node) {
    const dialog = $('mover');
    let at = state.folder;
    let seq = 0;
    $('mover-title').textContent = `Move “${node.name}”`;
    $('mover-error').textContent = '';

    const show = async (id) => {
      const mine = ++seq;
      $('mover-error').textContent = '';
      let path;
      let entries;
      try {
        [path, entries] = await Promise.all([pathTo(id), listAll(id)]);
      } catch (e) {
        if (mine === seq) $('mover-error').textContent = explain(e);
        return;
      }
      if (mine !== seq) return;
      at = id;
      const crumbs = [el('button', { type: 'button', class: 'crumb link', text: 'Files', onclick: () => show(ROOT) })];
      for (const p of path) {
        crumbs.push(el('span', { class: 'sep', text: '/' }));
        crumbs.push(el('button', { type: 'button', class: 'crumb link', text: p.name, onclick: () => show(p.id) }));
      }
      $('mover-crumbs').replaceChildren(...crumbs);
      const dirs = sorted(entries.filter((e) => e.kind === 'dir' && e.id !== node.id));
      const items = dirs.map((d) => el('li', null,
        el('button', { type: 'button', class: 'mover-item', onclick: () => show(d.id) }, svg('folder'), el('span', { text: d.name }))));
      if (!items.length) items.push(el('li', { class: 'hint', text: 'No folders here.' }));
      $('mover-list').replaceChildren(...items);
      $('mover-ok').disabled = id === node.parent;
    };

    $('mover-cancel').onclick = () => dialog.close();
    $('mover-ok').onclick = async () => {
      try {
        await api('POST', `/nodes/${node.id}/move`, {
          base_version: node.version, new_parent: at, new_name: node.name, mode: 'no_replace',
        });
      } catch (e) {
        $('mover-error').textContent = e.code === 'exists'
          ? `There is already something named “${node.name}” there.`
          : explain(e);
        return;
      }
      dialog.close();
      refreshSoon();
    };
    $('mover-form').onsubmit = (e) => e.preventDefault();
    dialog.showModal();
    show(at);
  }

  // ---------------------------------------------------------------- earlier versions
  // The file's kept earlier contents, newest first: each can be downloaded (under a name that
  // says when it was saved) or restored (committed again as the newest content; what it
  // replaces is kept as a version in turn).
  async function showVersions(node) {
    const dialog = $('versions');
    $('versions-title').textContent = `Earlier versions of “${node.name}”`;
    $('versions-error').textContent = '';
    $('versions-list').replaceChildren(el('li', { class: 'hint', text: 'Loading…' }));
    $('versions-close').onclick = () => dialog.close();
    $('versions-form').onsubmit = (e) => e.preventDefault();
    dialog.showModal();
    let list;
    try {
      list = { versions: await allPages(`/nodes/${node.id}/versions`, 'before', 'versions') };
    } catch (e) {
      $('versions-list').replaceChildren();
      $('versions-error').textContent = explain(e);
      return;
    }
    const items = list.versions.map((v) => {
      const saved = fmtDate(v.mtime_ns);
      const stamp = new Date(Math.floor(v.mtime_ns / 1e6)).toISOString().slice(0, 19).replace('T', ' ').replace(/:/g, '');
      const dot = node.name.lastIndexOf('.');
      const versionName = dot > 0
        ? `${node.name.slice(0, dot)} (version ${stamp})${node.name.slice(dot)}`
        : `${node.name} (version ${stamp})`;
      return el('li', { class: 'version', dataset: { version: String(v.version) } },
        el('span', { class: 'when' },
          el('span', { text: `Saved ${saved}` }),
          el('small', { text: `${fmtSize(v.content.size)} · replaced ${fmtDate(v.replaced_at_ns)}` })),
        el('button', {
          type: 'button', class: 'ghost small download-version',
          onclick: () => downloadContent(versionName, v.content.size, v.content.blocks || []),
        }, svg('download', { cls: 'act-icon' }), el('span', { text: 'Download' })),
        el('button', {
          type: 'button', class: 'ghost small restore-version',
          onclick: async () => {
            try {
              await api('POST', `/nodes/${node.id}/versions/${v.version}/restore`, {});
            } catch (e) {
              $('versions-error').textContent = `Cannot restore: ${explain(e)}`;
              return;
            }
            dialog.close();
            toast(`“${node.name}” is back to the version saved ${saved}.`);
            refreshSoon();
          },
        }, svg('restore', { cls: 'act-icon' }), el('span', { text: 'Restore' })));
    });
    if (!items.length) {
      items.push(el('li', { class: 'hint', text: 'No earlier versions: this file has not been changed since it was created (or not within 30 days).' }));
    }
    $('versions-list').replaceChildren(...items);
  }

  // ---------------------------------------------------------------- transfers
  function transfer(kind, name, total) {
    const bar = el('progress', { max: String(Math.max(total, 1)), value: '0' });
    const status = el('span', { class: 'status', text: kind === 'up' ? 'Preparing…' : 'Starting…' });
    const li = el('li', { class: 'transfer ' + kind },
      el('div', { class: 'transfer-name' },
        el('span', { class: 'dir', text: kind === 'up' ? '↑' : '↓' }),
        el('span', { class: 'fname', text: name })),
      bar, status);
    $('transfer-list').prepend(li);
    $('transfers').hidden = false;
    const gen = state.gen;
    return {
      gen,
      progress(done) {
        bar.value = Math.min(done, total);
        status.textContent = `${fmtSize(Math.min(done, total))} of ${fmtSize(total)}`;
      },
      say(text) { status.textContent = text; },
      done(text) {
        bar.value = bar.max;
        li.classList.add('ok');
        status.textContent = text;
        settleTransfers();
      },
      fail(text) {
        li.classList.add('failed');
        status.textContent = text;
      },
    };
  }

  // When every transfer has finished well, the panel folds away after a moment so it does
  // not cover the listing; a failure keeps it open until the user hides it.
  let settleTimer = 0;
  function settleTransfers() {
    clearTimeout(settleTimer);
    settleTimer = setTimeout(() => {
      const items = [...$('transfer-list').children];
      if (items.every((li) => li.classList.contains('ok'))) {
        $('transfers').hidden = true;
        $('transfer-list').replaceChildren();
      }
    }, 4000);
  }

  // The block's SHA-256 as S3 wants it in x-amz-checksum-sha256 (base64 of the digest): S3
  // then refuses a body with another hash. The local block store ignores it.
  function checksumHeader(hash) {
    let bin = '';
    for (let i = 0; i < hash.length; i += 2) bin += String.fromCharCode(parseInt(hash.slice(i, i + 2), 16));
    return btoa(bin);
  }

  // PUT one block's bytes to its signed URL, with upload progress. No token goes with it.
  function putBlock(url, hash, buf, onProgress) {
    const u = blockUrl(url);
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open('PUT', u.href);
      xhr.withCredentials = false;
      xhr.setRequestHeader('Content-Type', 'application/octet-stream');
      xhr.setRequestHeader('x-amz-checksum-sha256', checksumHeader(hash));
      xhr.upload.onprogress = (e) => onProgress(e.loaded);
      xhr.onload = () => (xhr.status >= 200 && xhr.status < 300
        ? resolve()
        : reject(new Error(`the block store refused a block (HTTP ${xhr.status})`)));
      xhr.onerror = () => reject(new Error('the block store cannot be reached'));
      xhr.send(buf);
    });
  }

  // Picked files; from the folder picker each carries its path (webkitRelativePath).
  function uploadFiles(files) {
    return uploadTree([...files].map((file) => ({
      file, dirs: (file.webkitRelativePath || '').split('/').slice(0, -1),
    })));
  }

  // Uploads files, each with the folder path (a list of names) it sits in below the current
  // folder. Folders are made as needed, or reused when one of that name is already there;
  // an item without a file is an empty folder.
  async function uploadTree(items) {
    const parent = state.folder;
    const made = new Map();
    const ensure = async (dirs) => {
      let id = parent;
      let key = '';
      for (const name of dirs) {
        key += '/' + name;
        if (made.has(key)) { id = made.get(key); continue; }
        const problem = nameProblem(name);
        if (problem) throw new Error(`folder “${name}”: ${problem}`);
        try {
          id = (await api('POST', '/nodes', { parent: id, name, kind: 'dir' })).id;
        } catch (e) {
          if (e.code !== 'exists' || !e.current || e.current.kind !== 'dir') throw e;
          id = e.current.id;
        }
        made.set(key, id);
      }
      return id;
    };
    for (const { file, dirs } of items) {
      if (!state.me) return;
      const label = [...dirs, file ? file.name : ''].filter(Boolean).join('/');
      let dir;
      try {
        dir = await ensure(dirs);
      } catch (e) {
        transfer('up', label, file ? file.size : 0).fail(`Failed: ${explain(e)}`);
        continue;
      }
      if (file) await uploadOne(file, dir, label);
    }
    refreshSoon();
  }

  // Reads what was dropped: files, and folders walked to the bottom. The entries must be
  // taken from the DataTransfer during the drop event; reading them may come later.
  async function readDropped(entries) {
    const out = [];
    const walk = async (entry, dirs) => {
      if (entry.isFile) {
        const file = await new Promise((res, rej) => entry.file(res, rej));
        out.push({ file, dirs });
      } else if (entry.isDirectory) {
        const sub = [...dirs, entry.name];
        const reader = entry.createReader();
        let empty = true;
        for (;;) {
          const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
          if (!batch.length) break;
          empty = false;
          for (const child of batch) await walk(child, sub);
        }
        if (empty) out.push({ file: null, dirs: sub });
      }
    };
    for (const entry of entries) await walk(entry, []);
    return out;
  }

  async function uploadOne(file, parent, label = file.name) {
    const item = transfer('up', label, file.size);
    const problem = nameProblem(file.name);
    if (problem) { item.fail(problem); return; }
    try {
      const blocks = await sendBlocks(file, item);
      if (item.gen !== state.gen) return;
      item.say('Saving…');
      const node = await commitFile(file, parent, blocks);
      if (node) item.done(node.name === file.name ? 'Uploaded' : `Uploaded as “${node.name}”`);
      else item.fail('Skipped');
      refreshSoon();
    } catch (e) {
      if (item.gen !== state.gen) return;
      item.fail(`Failed: ${e.message}`);
    }
  }

  // Hashes the file block by block and sends the blocks the store lacks, a batch at a time
  // (block URLs are short-lived). Returns every block's hash, in order.
  async function sendBlocks(file, item) {
    const count = Math.ceil(file.size / BLOCK);
    const hashes = [];
    const sent = new Set(); // a file may repeat a block (zeros): send it once
    let done = 0;
    for (let start = 0; start < count; start += URL_BATCH) {
      const batch = [];
      for (let i = start; i < Math.min(start + URL_BATCH, count); i++) {
        const buf = await file.slice(i * BLOCK, Math.min((i + 1) * BLOCK, file.size)).arrayBuffer();
        const hash = await sha256Hex(buf);
        hashes.push(hash);
        batch.push({ i, hash, size: buf.byteLength });
        if (item.gen !== state.gen) throw new Error('signed out');
      }
      const unique = [...new Set(batch.map((b) => b.hash))].filter((h) => !sent.has(h));
      const missing = new Map();
      if (unique.length) {
        const res = await api('POST', '/blocks/missing', { hashes: unique });
        for (const m of res.missing) missing.set(m.hash, m.url);
      }
      for (const b of batch) {
        const url = missing.get(b.hash);
        if (url && !sent.has(b.hash)) {
          const buf = await file.slice(b.i * BLOCK, b.i * BLOCK + b.size).arrayBuffer();
          await withRetry(() => putBlock(url, b.hash, buf, (loaded) => item.progress(done + loaded)));
          sent.add(b.hash);
        }
        done += b.size;
        item.progress(done);
      }
    }
    return hashes;
  }

  async function withRetry(fn) {
    let last;
    for (let attempt = 0; attempt < 3; attempt++) {
      try { return await fn(); } catch (e) { last = e; }
      await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
    }
    throw last;
  }

  // Creates the file, or when the name is taken asks: replace, keep both, or skip.
  async function commitFile(file, parent, blocks) {
    const content = { size: file.size, blocks };
    const mtime_ns = file.lastModified ? Math.round(file.lastModified) * 1e6 : undefined;
    try {
      return await api('POST', '/nodes', { parent, name: file.name, kind: 'file', content, mtime_ns });
    } catch (e) {
      if (e.code !== 'exists' || !e.current) throw e;
      const current = e.current;
      const canReplace = current.kind === 'file';
      const r = await ask({
        title: 'The name is taken',
        text: canReplace
          ? `“${file.name}” already exists here. Replace it (its current content is kept as an earlier version), keep both, or skip this file?`
          : `A folder named “${file.name}” is here. Keep both (the file gets a new name) or skip it?`,
        buttons: [
          { label: 'Skip', cancel: true },
          { label: 'Keep both', value: 'both', primary: !canReplace },
          ...(canReplace ? [{ label: 'Replace', value: 'replace', primary: true }] : []),
        ],
      });
      if (!r) return null;
      if (r.button === 'replace') {
        let base = current.version;
        for (let attempt = 0; attempt < 3; attempt++) {
          try {
            return await api('PUT', `/nodes/${current.id}/content`, { base_version: base, content, mtime_ns });
          } catch (e2) {
            if (e2.code !== 'conflict' || !e2.current) throw e2;
            base = e2.current.version;
          }
        }
        throw new Error('the file keeps changing elsewhere');
      }
      const dot = file.name.lastIndexOf('.');
      const stem = dot > 0 ? file.name.slice(0, dot) : file.name;
      const ext = dot > 0 ? file.name.slice(dot) : '';
      for (let n = 2; n < 1000; n++) {
        const name = `${stem} (${n})${ext}`;
        try {
          return await api('POST', '/nodes', { parent, name, kind: 'file', content, mtime_ns });
        } catch (e2) {
          if (e2.code !== 'exists') throw e2;
        }
      }
      throw new Error('no free name found');
    }
  }

  async function download(node) {
    let fresh;
    try {
      fresh = await api('GET', `/nodes/${node.id}`);
    } catch (e) {
      toast(`Cannot download “${node.name}”: ${explain(e)}`, { error: true });
      return;
    }
    await downloadContent(fresh.name, fresh.size, fresh.blocks || []);
  }

  // Fetches blocks by hash (verifying each) and saves them as one file named `name`.
  async function downloadContent(name, size, blocks) {
    const item = transfer('down', name, size);
    try {
      const parts = [];
      let done = 0;
      for (let start = 0; start < blocks.length; start += URL_BATCH) {
        const batch = blocks.slice(start, start + URL_BATCH);
        const res = await api('POST', '/blocks/urls', { hashes: [...new Set(batch)] });
        const urls = new Map(res.urls.map((u) => [u.hash, u.url]));
        for (const hash of batch) {
          const url = urls.get(hash);
          if (!url) throw new Error('a block of this file is missing from the store');
          const buf = await withRetry(async () => {
            const resp = await fetch(blockUrl(url), { credentials: 'omit', referrerPolicy: 'no-referrer' });
            if (!resp.ok) throw new Error(`the block store answered HTTP ${resp.status}`);
            return resp.arrayBuffer();
          });
          if ((await sha256Hex(buf)) !== hash) throw new Error('a block arrived damaged (hash mismatch)');
          parts.push(buf);
          done += buf.byteLength;
          item.progress(done);
          if (item.gen !== state.gen) return;
        }
      }
      if (done !== size) throw new Error(`expected ${size} bytes, got ${done}`);
      const blob = new Blob(parts, { type: 'application/octet-stream' });
      const href = URL.createObjectURL(blob);
      const a = el('a', { href, download: name, rel: 'noopener', class: 'visually-hidden' });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(href), 60000);
      item.done('Downloaded');
    } catch (e) {
      item.fail(`Failed: ${e.message}`);
    }
  }

  // ---------------------------------------------------------------- trash
  async function loadTrash() {
    const seq = ++state.loadSeq;
    const gen = state.gen;
    let page;
    try {
      page = { entries: await allPages('/trash', 'after', 'entries') };
    } catch (e) {
      if (e.status !== 401) toast(`Cannot read the trash: ${e.message}`, { error: true });
      return;
    }
    if (seq !== state.loadSeq || gen !== state.gen) return;
    state.trash = page.entries;
    document.title = 'Trash · JewelFS';
    const entries = [...page.entries].sort((a, b) => b.deleted_at_ns - a.deleted_at_ns);
    // Where each one lived: its folder's name, or the top folder when that is gone too
    // (a restore then puts it there).
    const places = new Map([[ROOT, 'Files']]);
    await Promise.all([...new Set(entries.map((e) => e.node.parent))]
      .filter((id) => !places.has(id))
      .map(async (id) => {
        try { places.set(id, (await api('GET', `/nodes/${id}`)).name); } catch (_) { places.set(id, null); }
      }));
    if (seq !== state.loadSeq || gen !== state.gen) return;
    const rows = entries.map(({ node, deleted_at_ns: at }) => {
      const place = places.get(node.parent);
      const nameCell = el('td', { class: 'c-name' }, el('span', { class: 'name', text: node.name }),
        el('span', { class: 'origin', text: place ? `from ${place}` : 'from a deleted folder (restores to Files)' }));
      const meta = node.kind === 'dir' ? `deleted ${fmtDate(at)}` : `${fmtSize(node.size)} · deleted ${fmtDate(at)}`;
      nameCell.append(el('span', { class: 'meta', text: meta }));
      const restoreBtn = el('button', { type: 'button', class: 'ghost small restore', onclick: () => restore(node.id) },
        svg('restore', { cls: 'act-icon' }), el('span', { text: 'Restore' }));
      return el('tr', { class: 'row', dataset: { id: String(node.id), kind: node.kind } },
        el('td', { class: 'c-icon' }, nodeIcon(node)),
        nameCell,
        el('td', { class: 'c-size', text: node.kind === 'dir' ? '—' : fmtSize(node.size) }),
        el('td', { class: 'c-date', text: fmtDate(at) }),
        el('td', { class: 'c-actions' }, restoreBtn));
    });
    $('trash-rows').replaceChildren(...rows);
    $('trash-empty').hidden = rows.length > 0;
  }

  // ---------------------------------------------------------------- devices
  // The account's machines (name, own token or the account's, last seen), unlinking one,
  // and approving a machine that waits behind a code (`jewelfs login` shows it, and the
  // page `#/link/CODE`). A code's machine is shown by name before it is approved.
  async function loadDevices() {
    const gen = state.gen;
    let list;
    try {
      list = await api('GET', '/devices');
    } catch (e) {
      if (e.status !== 401 && gen === state.gen) toast(`Cannot list the devices: ${e.message}`, { error: true });
      return;
    }
    if (gen !== state.gen || state.view !== 'devices') return;
    document.title = 'Devices · JewelFS';
    state.devices = list.devices;
    const rows = list.devices.map((d) => {
      const nameCell = el('td', { class: 'c-name' }, el('span', { class: 'name', text: d.name }));
      if (d.this_device) nameCell.append(el('span', { class: 'badge this', text: 'this browser’s token' }));
      const unlinkBtn = el('button', { type: 'button', class: 'ghost small unlink', onclick: () => unlinkDevice(d) },
        svg('trash', { cls: 'act-icon' }), el('span', { text: 'Unlink' }));
      return el('tr', { class: 'row device', dataset: { id: String(d.id) } },
        nameCell,
        el('td', { class: 'c-token', text: d.linked ? 'own' : 'account' }),
        el('td', { class: 'c-date seen', text: d.last_seen_ns ? fmtDate(d.last_seen_ns) : '—' }),
        el('td', { class: 'c-date', text: d.created_at_ns ? fmtDate(d.created_at_ns) : '—' }),
        el('td', { class: 'c-actions' }, unlinkBtn));
    });
    $('device-rows').replaceChildren(...rows);
    $('devices-empty').hidden = rows.length > 0;
  }

  async function unlinkDevice(d) {
    const text = d.linked
      ? `Its token stops working at once; the drive there goes offline and keeps what it has not uploaded (it uploads if the machine is linked again).`
      : `It uses the account token, which keeps working there: this only forgets it. Reissue the account token (jewel-server user token NAME) to cut it off.`;
    const r = await ask({
      title: `Unlink “${d.name}”?`,
      text,
      buttons: [{ label: 'Cancel', cancel: true }, { label: 'Unlink', value: 'unlink', primary: true }],
    });
    if (!r) return;
    try {
      await api('DELETE', `/devices/${d.id}`);
      toast(`Unlinked “${d.name}”.`);
    } catch (e) {
      if (e.status !== 401) toast(`Cannot unlink “${d.name}”: ${explain(e)}`, { error: true });
    }
    loadDevices();
  }

  function resetLinkForm() {
    state.linkCode = null;
    $('link-found').hidden = true;
    $('link-error').textContent = '';
    $('link-code').value = '';
  }

  async function findLink(text) {
    const error = $('link-error');
    error.textContent = '';
    $('link-found').hidden = true;
    $('link-code').value = text;
    const code = text.replace(/[\s-]/g, '').toUpperCase();
    if (!/^[A-Z0-9]{8}$/.test(code)) {
      error.textContent = 'A code has 8 letters and digits, like ABCD-EFGH.';
      return;
    }
    try {
      const link = await api('GET', `/links/${code.slice(0, 4)}-${code.slice(4)}`);
      state.linkCode = link.code;
      $('link-code').value = link.code;
      $('link-question').textContent = `Link the machine “${link.name}” to your account? Only approve a code you see on a machine of yours.`;
      $('link-found').hidden = false;
      $('link-approve').focus();
    } catch (e) {
      if (e.status === 404) error.textContent = 'No machine waits with that code (mistyped, expired, or linked already).';
      else if (e.status !== 401) error.textContent = `Cannot look up the code: ${e.message}`;
    }
  }

  async function approveLink() {
    const code = state.linkCode;
    if (!code) return;
    try {
      const d = await api('POST', `/links/${code}/approve`);
      resetLinkForm();
      toast(`Linked “${d.name}”. It finishes on its own in a moment.`);
      if (location.hash !== '#/devices') history.replaceState(null, '', '#/devices');
    } catch (e) {
      $('link-error').textContent = e.status === 404
        ? 'That code expired or was used meanwhile. Run jewelfs login again.'
        : `Cannot link: ${explain(e)}`;
    }
    loadDevices();
  }

  // ---------------------------------------------------------------- live updates
  function setLive(ok) {
    const live = $('live');
    live.classList.toggle('ok', ok);
    live.textContent = ok ? 'Live' : 'Offline';
    live.title = ok ? 'Changes from your other machines appear here as they happen.' : 'Cannot reach the service; retrying.';
  }

  function touchesView(ev) {
    if (state.view === 'devices') return false;
    if (state.view === 'trash') return true;
    const n = ev.node;
    if (n.parent === state.folder || n.id === state.folder) return true;
    if (ev.from && ev.from.parent === state.folder) return true;
    return state.path.some((p) => p.id === n.id);
  }

  async function pollLoop(gen) {
    while (gen === state.gen) {
      let more = false;
      try {
        const page = await api('GET', `/changes?since=${state.cursor}&limit=1000`);
        if (gen !== state.gen) return;
        let touched = false;
        for (const ev of page.events) {
          if (ev.seq > state.cursor) state.cursor = ev.seq;
          if (touchesView(ev)) touched = true;
        }
        // A token of a device gets the changes of the folders that device listed, and
        // `through` says how far that page reaches past its last event.
        if (typeof page.through === 'number' && page.through > state.cursor) state.cursor = page.through;
        if (touched) refreshSoon();
        if (state.view === 'devices') loadDevices();
        more = page.latest_seq > state.cursor && (page.events.length > 0 || typeof page.through === 'number');
        setLive(true);
      } catch (e) {
        if (gen !== state.gen) return;
        if (e.code === 'cursor_too_old') {
          // Too far behind to catch up event by event: start again from now and re-list.
          try {
            const me = await api('GET', '/me');
            state.cursor = me.latest_seq;
            refreshSoon();
          } catch (_) { /* retried on the next turn */ }
        } else {
          setLive(false);
        }
      }
      if (!more) await new Promise((r) => setTimeout(r, document.hidden ? POLL_HIDDEN_MS : POLL_MS));
    }
  }

  // ---------------------------------------------------------------- wiring
  function wire() {
    $('signin-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const token = $('token').value.trim();
      if (token) signIn(token, false);
    });
    $('signout').addEventListener('click', () => signOut());
    $('link-form').addEventListener('submit', (e) => {
      e.preventDefault();
      findLink($('link-code').value);
    });
    $('link-approve').addEventListener('click', approveLink);
    $('link-cancel').addEventListener('click', resetLinkForm);
    $('new-folder').addEventListener('click', newFolder);
    for (const id of ['file-input', 'folder-input']) {
      $(id).addEventListener('change', (e) => {
        const files = [...e.target.files];
        e.target.value = '';
        uploadFiles(files);
      });
    }
    $('transfers-close').addEventListener('click', () => {
      $('transfers').hidden = true;
      for (const li of [...$('transfer-list').children]) {
        if (li.classList.contains('ok') || li.classList.contains('failed')) li.remove();
      }
    });
    for (const btn of document.querySelectorAll('button.sort')) {
      btn.addEventListener('click', () => {
        const key = btn.dataset.sort;
        state.sort = state.sort.key === key ? { key, dir: -state.sort.dir } : { key, dir: 1 };
        localStorage.setItem(SORT_KEY, JSON.stringify(state.sort));
        renderRows();
      });
    }
    window.addEventListener('hashchange', route);

    // Drag and drop: anywhere on the page while the file view is open.
    const hint = $('drop-hint');
    let depth = 0;
    const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes('Files');
    window.addEventListener('dragenter', (e) => {
      if (!hasFiles(e) || !state.me || state.view !== 'files') return;
      e.preventDefault();
      depth++;
      hint.hidden = false;
    });
    window.addEventListener('dragleave', (e) => {
      if (!hasFiles(e)) return;
      depth = Math.max(0, depth - 1);
      if (depth === 0) hint.hidden = true;
    });
    window.addEventListener('dragover', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = state.me && state.view === 'files' ? 'copy' : 'none';
    });
    window.addEventListener('drop', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault(); // never let the browser open a dropped file in this origin
      depth = 0;
      hint.hidden = true;
      if (!state.me || state.view !== 'files') return;
      const files = [];
      const folders = [];
      const items = e.dataTransfer.items ? [...e.dataTransfer.items] : [];
      for (const it of items) {
        if (it.kind !== 'file') continue;
        const entry = it.webkitGetAsEntry ? it.webkitGetAsEntry() : null;
        if (entry && entry.isDirectory) { folders.push(entry); continue; }
        const f = it.getAsFile();
        if (f) files.push(f);
      }
      if (!items.length) files.push(...e.dataTransfer.files);
      const plain = files.map((file) => ({ file, dirs: [] }));
      if (!folders.length) {
        uploadTree(plain);
        return;
      }
      readDropped(folders)
        .then((tree) => uploadTree([...plain, ...tree]))
        .catch((err) => toast(`Cannot read the dropped folder: ${err.message}`, { error: true }));
    });
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && state.me) refreshSoon();
    });
  }

  function start() {
    wire();
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) signIn(token, true);
    else showSignIn();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
