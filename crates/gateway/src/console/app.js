// The SHG web console: a client of the gateway's /v1 API, logged in by a cookie session.
// No framework, no build step; every text goes in through textContent.
'use strict';

const $ = (id) => document.getElementById(id);
const POLL_MS = 3000;
const HISTORY = 100; // samples kept per service: 5 minutes at POLL_MS
let session = null; // {realm, provider, csrf, events_since}
let services = [];
let stats = null;
let capacity = null;
const cards = new Map(); // service name -> card parts
const history = new Map(); // service name -> [{cpu, mem}]
let events = [];
let stream = null;
let poller = null;
let pending = null; // {blob, label}: the package whose verdict is shown

const EXPLAIN = {
  'admission-refused': 'Not enough room: the gateway could not guarantee the resources this service reserves, so nothing changed.',
  'evicted': 'Stopped to relieve memory pressure: the gateway ran short of memory and this was the least important service using more than it reserved. It stays stopped until started again.',
  'stopped-for-room': 'Stopped to make room for another service, as the household agreed.',
  'cpu-throttled': 'Slowed down: it wanted more processor time than its CPU limit allows.',
  'oom-killed': 'Ran out of its own memory limit: the kernel ended a process inside it; its neighbours were not affected.',
  'crash-loop': 'Keeps failing soon after starting; the gateway still retries, at most once a minute.',
  'start-failed': 'Could not be started.',
  'install-failed': 'Could not be installed.',
  'health': 'Its health check changed.',
  'network-degraded': 'Its network could not be set up completely.',
};
const KINDS = Object.keys(EXPLAIN).concat(['installed', 'installing', 'started', 'stopped', 'stopping',
  'exited', 'restarting', 'removed', 'removing', 'adopted', 'priority', 'killed', 'recovery-failed', 'message']);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

// --- units ---
function bytes(n) {
  if (n == null) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)) + ' ' + u[i];
}
const cores = (m) => m == null ? '–' : (m / 1000).toFixed(m % 1000 === 0 ? 0 : 2) + ' cores';
const rate = (b) => b == null ? '–' : (b >= 1e6 ? (b / 1e6).toFixed(b % 1e6 ? 1 : 0) + ' Mbit/s' : Math.round(b / 1e3) + ' kbit/s');
const UNITS = { cpu: cores, memory: bytes, storage: bytes, bandwidth_down: rate, bandwidth_up: rate };
const NAMES = { cpu: 'CPU', memory: 'Memory', storage: 'Storage', bandwidth_down: 'Bandwidth down', bandwidth_up: 'Bandwidth up' };

// --- the API ---
async function api(method, path, body, type) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET' && session && session.csrf) headers['X-CSRF-Token'] = session.csrf;
  if (type) headers['Content-Type'] = type;
  const r = await fetch(path, { method, headers, body, credentials: 'same-origin', cache: 'no-store' });
  const text = await r.text();
  let data = text; // logs are newline-delimited JSON: the caller splits them
  if ((r.headers.get('Content-Type') || '').startsWith('application/json')) {
    try { data = text ? JSON.parse(text) : null; } catch (_) { /* keep the text */ }
  }
  if (!r.ok) {
    const e = new Error((data && data.message) || r.statusText);
    e.status = r.status;
    e.body = data;
    if (r.status === 401 && session) loggedOut('Your session ended: ' + e.message);
    throw e;
  }
  return data;
}

function notice(text, kind) {
  const n = $('notice');
  n.textContent = text;
  n.className = kind || '';
  n.hidden = !text;
}

// --- logging in and out ---
async function login(ev) {
  ev.preventDefault();
  const input = $('token');
  const token = input.value.trim();
  input.value = '';
  $('login-error').textContent = '';
  try {
    const r = await fetch('/console/login', {
      method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token }),
    });
    const data = await r.json();
    if (!r.ok) throw new Error(data.message);
    start(data);
  } catch (e) {
    $('login-error').textContent = 'Not logged in: ' + e.message;
  }
}

async function logout() {
  try { await api('POST', '/console/logout'); } catch (_) { /* ended anyway */ }
  loggedOut('');
}

function loggedOut(why) {
  session = null;
  if (stream) stream.close();
  if (poller) clearInterval(poller);
  stream = poller = null;
  cards.clear();
  history.clear();
  events = [];
  $('services').replaceChildren();
  $('events').replaceChildren();
  $('app').hidden = true;
  $('logout').hidden = true;
  $('who').textContent = '';
  $('login').hidden = false;
  $('login-error').textContent = why;
  document.body.dataset.realm = '';
}

function start(s) {
  session = s;
  const realm = s.realm;
  document.body.dataset.realm = realm;
  $('who').textContent = realm === 'provider' ? 'Provider ' + s.provider : realm === 'home' ? 'Household' : 'Operator';
  $('login').hidden = true;
  $('app').hidden = false;
  $('logout').hidden = false;
  $('capacity-panel').hidden = realm === 'provider';
  $('tenants-panel').hidden = realm !== 'operator';
  $('install-panel').hidden = realm !== 'home';
  $('services-title').textContent = realm === 'provider' ? 'Your services' : 'Services';
  $('services-hint').textContent = realm === 'home'
    ? 'Most important first: move a service up or down to change its priority.'
    : realm === 'operator' ? 'Every tenant\'s services and their use; logs stay with their providers.' : '';
  if (realm === 'home') loadCatalog();
  follow();
  refresh();
  poller = setInterval(refresh, POLL_MS);
}

// --- data ---
let refreshing = false;
async function refresh() {
  if (!session || refreshing) return;
  refreshing = true;
  try {
    const wants = [api('GET', '/v1/services'), api('GET', '/v1/stats')];
    if (session.realm !== 'provider') wants.push(api('GET', '/v1/gateway/capacity'));
    const [list, st, cap] = await Promise.all(wants);
    services = list;
    stats = st;
    capacity = cap || null;
    record();
    render();
  } catch (e) {
    if (session) notice('Cannot reach the gateway: ' + e.message, 'error');
  } finally {
    refreshing = false;
  }
}

// How the console names a service: its name, or PROVIDER/NAME when two providers each have
// one of that name (a service, or its use in `stats`).
function label(s) {
  return services.filter((x) => x.name === s.name).length > 1 ? s.provider + '/' + s.name : s.name;
}

function record() {
  for (const u of stats.services) {
    const h = history.get(label(u)) || [];
    h.push({ cpu: u.cpu.used, mem: u.memory.used });
    if (h.length > HISTORY) h.shift();
    history.set(label(u), h);
  }
}

function follow() {
  // Recent history first, then live: the session says where the recent part starts.
  stream = new EventSource('/v1/events?follow=true&since=' + (session.events_since || 0));
  const on = (m) => {
    const e = JSON.parse(m.data);
    events.push(e);
    if (events.length > 100) events.shift();
    renderEvents();
    if (e.service) scheduleRefresh();
  };
  for (const k of KINDS) stream.addEventListener(k, on);
}

let soon = null;
function scheduleRefresh() {
  if (soon) return;
  soon = setTimeout(() => { soon = null; refresh(); }, 300);
}

// --- rendering ---
function render() {
  renderServices();
  if (session.realm !== 'provider') renderCapacity();
  if (session.realm === 'operator') renderTenants();
}

function ordered() {
  return services.slice().sort((a, b) => b.priority - a.priority || a.name.localeCompare(b.name));
}

// A bar: use against reservation (marker) and limit (the end of the track).
function bar(label) {
  const fill = el('span', { class: 'fill' });
  const mark = el('span', { class: 'mark', title: 'reserved' });
  const text = el('span', { class: 'bar-text' });
  const root = el('div', { class: 'bar-row' }, el('span', { class: 'bar-label', text: label }),
    el('span', { class: 'track' }, fill, mark), text);
  return { root, fill, mark, text, set(used, reserve, limit, fmt) {
    const scale = Math.max(limit || 0, reserve || 0, used || 0, 1) * (limit ? 1 : 1.25);
    fill.style.width = Math.min(100, 100 * (used || 0) / scale) + '%';
    fill.classList.toggle('over', used != null && reserve > 0 && used > reserve);
    mark.style.left = Math.min(100, 100 * (reserve || 0) / scale) + '%';
    mark.hidden = !reserve;
    text.textContent = (used == null ? 'not measured' : fmt(used) + ' used') +
      ' · ' + fmt(reserve || 0) + ' reserved · ' + (limit ? fmt(limit) + ' limit' : 'no limit');
  } };
}

function card(name) {
  if (cards.has(name)) return cards.get(name);
  const c = {};
  c.title = el('h3', { text: name });
  c.meta = el('span', { class: 'meta' });
  c.state = el('span', { class: 'badge state' });
  c.health = el('span', { class: 'badge health' });
  c.reason = el('p', { class: 'reason' });
  c.cpu = bar('CPU');
  c.mem = bar('Memory');
  c.disk = bar('Storage');
  c.bwDown = bar('Download');
  c.bwUp = bar('Upload');
  c.chart = el('div', { class: 'chart' });
  c.actions = el('div', { class: 'buttons' });
  c.logs = el('pre', { class: 'logs' });
  c.logs.hidden = true;
  c.root = el('article', { class: 'card', 'data-service': name },
    el('header', {}, c.title, c.state, c.health), c.meta, c.reason,
    c.cpu.root, c.mem.root, c.disk.root, c.bwDown.root, c.bwUp.root, c.chart, c.actions, c.logs);
  const act = (label, cls, fn) => {
    const b = el('button', { type: 'button', class: cls, text: label });
    b.addEventListener('click', () => run(b, fn));
    c.actions.append(b);
    return b;
  };
  const realm = session.realm;
  if (realm === 'home') {
    c.up = act('▲ Up', 'up', () => move(name, -1));
    c.up.setAttribute('aria-label', 'Move ' + name + ' up');
    c.down = act('▼ Down', 'down', () => move(name, 1));
    c.down.setAttribute('aria-label', 'Move ' + name + ' down');
  }
  if (realm !== 'operator') {
    c.start = act('Start', 'start', () => api('POST', '/v1/services/' + encodeURIComponent(name) + '/start'));
    c.stop = act('Stop', 'stop', () => api('POST', '/v1/services/' + encodeURIComponent(name) + '/stop'));
  }
  if (realm === 'home') {
    c.remove = act('Remove', 'remove danger', async () => {
      if (c.remove.dataset.armed !== 'yes') {
        c.remove.dataset.armed = 'yes';
        c.remove.textContent = 'Really remove? Its data goes too';
        return;
      }
      await api('DELETE', '/v1/services/' + encodeURIComponent(name));
      notice('Removed ' + name + '.');
    });
  }
  if (realm === 'provider') {
    act('Logs', 'show-logs', async () => {
      const text = await api('GET', '/v1/services/' + encodeURIComponent(name) + '/logs?tail=50');
      const lines = String(text || '').split('\n').filter(Boolean).map((l) => {
        try { const e = JSON.parse(l); return new Date(e.time_ms).toLocaleTimeString() + ' ' + e.text; } catch (_) { return l; }
      });
      c.logs.textContent = lines.join('\n') || '(no output yet)';
      c.logs.hidden = false;
    });
  }
  cards.set(name, c);
  return c;
}

// Runs a button's action; the button stays disabled (and marked busy) until it is over.
async function run(button, fn) {
  button.disabled = true;
  button.dataset.busy = 'yes';
  try {
    await fn();
    await refresh();
  } catch (e) {
    notice(explainError(e), 'error');
  } finally {
    delete button.dataset.busy;
    button.disabled = false;
    // A card's buttons also depend on its place (the top card cannot move up).
    if (button.closest('#services')) renderServices();
  }
}

function renderServices() {
  const list = ordered();
  const box = $('services');
  const names = new Set(list.map(label));
  for (const [name, c] of cards) if (!names.has(name)) { c.root.remove(); cards.delete(name); }
  if (!list.length) {
    box.replaceChildren(el('p', { class: 'hint', text: 'No services installed.' }));
    return;
  }
  box.querySelectorAll('p.hint').forEach((p) => p.remove());
  list.forEach((s, i) => {
    const c = card(label(s));
    const u = (stats && stats.services.find((x) => x.name === s.name && x.provider === s.provider)) || null;
    c.meta.textContent = s.provider + ' · ' + s.version + ' · priority ' + s.priority;
    c.state.textContent = s.state;
    c.state.dataset.state = s.state;
    c.health.textContent = s.health === 'none' ? 'no health check' : s.health;
    c.health.dataset.health = s.health;
    c.reason.textContent = s.reason ? 'Why: ' + s.reason : '';
    c.reason.hidden = !s.reason;
    if (u) {
      c.cpu.set(u.cpu.used, u.cpu.reserve, u.cpu.limit, cores);
      c.mem.set(u.memory.used, u.memory.reserve, u.memory.limit, bytes);
      c.disk.set(u.storage.used, u.storage.reserve, u.storage.limit, bytes);
      for (const [b, use] of [[c.bwDown, u.bandwidth_down], [c.bwUp, u.bandwidth_up]]) {
        if (use) b.set(use.used, use.reserve, use.limit, rate);
      }
    }
    drawChart(c.chart, history.get(label(s)) || [], u);
    const running = s.desired === 'running';
    if (c.start) c.start.hidden = running;
    if (c.stop) c.stop.hidden = !running;
    // A render while a move is on its way leaves its button disabled.
    if (c.up) c.up.disabled = i === 0 || c.up.dataset.busy === 'yes';
    if (c.down) c.down.disabled = i === list.length - 1 || c.down.dataset.busy === 'yes';
    box.append(c.root); // in order: moves the card, keeps its buttons
  });
}

// The last minutes of CPU and memory, as two lines against their limits.
function drawChart(box, h, u) {
  const NS = 'http://www.w3.org/2000/svg';
  const W = 200, H = 36;
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  const line = (key, max, cls) => {
    const pts = h.map((p, i) => [(i / (HISTORY - 1)) * W, H - 2 - ((p[key] || 0) / max) * (H - 4)]);
    if (pts.length < 2) return;
    const pl = document.createElementNS(NS, 'polyline');
    pl.setAttribute('points', pts.map((p) => p[0].toFixed(1) + ',' + p[1].toFixed(1)).join(' '));
    pl.setAttribute('class', cls);
    svg.append(pl);
  };
  const top = (key, lim) => Math.max(lim || 0, ...h.map((p) => p[key] || 0), 1);
  line('cpu', top('cpu', u && (u.cpu.limit || u.cpu.reserve)), 'cpu');
  line('mem', top('mem', u && (u.memory.limit || u.memory.reserve)), 'mem');
  svg.setAttribute('aria-label', 'CPU and memory over the last ' + Math.round(h.length * POLL_MS / 60000) + ' minutes');
  box.replaceChildren(svg, el('span', { class: 'legend' }, el('span', { class: 'cpu', text: 'CPU' }), ' ',
    el('span', { class: 'mem', text: 'memory' }), ' · last ' + Math.max(1, Math.round(h.length * POLL_MS / 60000)) + ' min'));
}

function renderCapacity() {
  const g = stats && stats.gateway;
  if (!g) return;
  const rows = Object.keys(NAMES).map((k) => {
    const t = g[k], f = UNITS[k];
    const avail = Math.max(1, t.capacity - t.system_reserve);
    const res = el('span', { class: 'fill' });
    res.style.width = Math.min(100, 100 * t.reserved / avail) + '%';
    const used = el('span', { class: 'used' });
    used.style.width = Math.min(100, 100 * (t.used || 0) / t.capacity) + '%';
    used.hidden = t.used == null;
    return el('tr', { 'data-resource': k },
      el('th', { text: NAMES[k] }),
      el('td', {}, el('span', { class: 'track wide' }, res, used)),
      el('td', { text: f(t.reserved) + ' reserved of ' + f(avail) }),
      el('td', { text: t.used == null ? 'use not measured' : f(t.used) + ' used of ' + f(t.capacity) }),
      el('td', { text: f(t.free) + ' free' }));
  });
  $('capacity').replaceChildren(el('div', { class: 'scroll' }, el('table', {}, el('tbody', {}, ...rows))),
    el('p', { class: 'hint', text: 'Reserved: what services are guaranteed (after ' + cores(g.cpu.system_reserve) + ' and ' +
      bytes(g.memory.system_reserve) + ' kept for the gateway itself). Used: what the whole host uses now.' }));
}

function renderTenants() {
  if (!capacity) return;
  const keys = ['cpu', 'memory', 'storage', 'bandwidth_down', 'bandwidth_up'];
  const head = el('tr', {}, el('th', { text: 'Provider' }), el('th', { text: 'Services' }),
    ...keys.map((k) => el('th', { text: NAMES[k] + ' reserved / cap' })));
  const rows = Object.entries(capacity.tenants || {}).map(([p, t]) => el('tr', { 'data-tenant': p },
    el('th', { text: p }), el('td', { text: String(services.filter((s) => s.provider === p).length) }),
    ...keys.map((k) => el('td', { text: UNITS[k](t.reserved[k]) + ' / ' + (t.cap[k] == null ? 'no cap' : UNITS[k](t.cap[k])) }))));
  $('tenants').replaceChildren(el('div', { class: 'scroll' }, el('table', {}, el('thead', {}, head), el('tbody', {}, ...rows))));
}

function renderEvents() {
  const items = events.slice().reverse().map((e) => el('li', { 'data-kind': e.kind },
    el('time', { text: new Date(e.time_ms).toLocaleTimeString() }), ' ',
    el('strong', { text: e.service || 'gateway' }), ' ', el('span', { class: 'kind', text: e.kind }),
    EXPLAIN[e.kind] ? el('p', { class: 'explain', text: EXPLAIN[e.kind] }) : null,
    el('p', { class: 'message', text: e.message })));
  $('events').replaceChildren(...items);
}

// --- priorities by order ---
// Moves `name` one place up (-1) or down (+1) and changes as few priorities as it takes for
// the order to hold; when there is no room between 0 and 100, spreads them evenly.
async function move(name, dir) {
  const list = ordered();
  const i = list.findIndex((s) => label(s) === name);
  const j = i + dir;
  if (i < 0 || j < 0 || j >= list.length) return;
  [list[i], list[j]] = [list[j], list[i]];
  const p = list.map((s) => s.priority);
  if (dir < 0) { // moved up to j: above everything below it
    for (let k = j; k >= 0; k--) {
      if (k === list.length - 1 || p[k] > p[k + 1]) break;
      p[k] = p[k + 1] + 1;
    }
  } else { // moved down to j: below everything above it
    for (let k = j; k < list.length; k++) {
      if (k === 0 || p[k] < p[k - 1]) break;
      p[k] = p[k - 1] - 1;
    }
  }
  if (p.some((v) => v < 0 || v > 100)) {
    const n = list.length;
    for (let k = 0; k < n; k++) p[k] = Math.round(100 - (k * 100) / Math.max(1, n - 1));
  }
  for (let k = 0; k < list.length; k++) {
    if (p[k] !== list[k].priority) {
      await api('POST', '/v1/services/' + encodeURIComponent(label(list[k])) + '/priority', JSON.stringify({ priority: p[k] }), 'application/json');
    }
  }
  notice(name + ' moved ' + (dir < 0 ? 'up' : 'down') + ': under pressure it is now ' +
    (dir < 0 ? 'kept before' : 'stopped before') + ' ' + label(list[dir < 0 ? j + 1 : j - 1]) + '.');
}

// --- installing ---
async function loadCatalog() {
  const box = $('catalog');
  try {
    const list = await api('GET', '/console/catalog');
    if (!list.length) { box.replaceChildren(); return; }
    $('package-label').textContent = 'Or a package file (.tar)';
    box.replaceChildren(el('p', { text: 'From the gateway\'s catalog:' }), el('ul', { class: 'catalog' }, ...list.map((p) => {
      const b = el('button', { type: 'button', class: 'check', text: 'Check ' + p.name });
      b.addEventListener('click', () => run(b, async () => {
        const r = await fetch('/console/catalog/' + encodeURIComponent(p.file), { credentials: 'same-origin' });
        if (!r.ok) throw new Error('cannot fetch ' + p.file);
        await check(await r.blob(), p.name);
      }));
      return el('li', { 'data-package': p.name }, el('strong', { text: p.name }),
        ' ' + p.version + ' by ' + p.provider + (p.description ? ' — ' + p.description : '') + ' ', b);
    })));
  } catch (e) {
    box.textContent = 'The catalog is not available: ' + e.message;
  }
}

// Asks the gateway for its verdict (dry run) before anything can be installed.
async function check(blob, label) {
  pending = null;
  const v = $('verdict');
  const install = $('install'), room = $('install-room');
  install.disabled = true;
  install.textContent = 'Install';
  room.hidden = true;
  v.className = '';
  v.textContent = 'Checking ' + label + '…';
  try {
    const verdict = await api('POST', '/v1/services?dry_run=true', blob, 'application/octet-stream');
    pending = { blob, label: verdict.service };
    v.className = 'ok';
    v.replaceChildren(el('strong', { text: 'Fits. ' }), verdict.message + '.');
    install.textContent = 'Install ' + verdict.service;
    install.disabled = false;
  } catch (e) {
    v.className = 'refused';
    v.replaceChildren(...explainRefusal(e));
    const proposal = e.body && e.body.detail && e.body.detail.proposal;
    if (proposal && proposal.length && e.body.detail.way_out === 'stop') {
      pending = { blob, label: e.body.detail.service, stop: proposal };
      room.textContent = 'Stop ' + proposal.join(', ') + ' and install ' + e.body.detail.service;
      room.hidden = false;
    }
  }
}

function explainRefusal(e) {
  const d = e.body && e.body.detail;
  if (!d || !d.shortages) return [el('strong', { text: 'Cannot install: ' }), e.message];
  const parts = d.shortages.map((s) => {
    const f = UNITS[s.resource] || String;
    const where = s.scope.kind === 'gateway' ? 'on the gateway' : 'within provider ' + s.scope.provider + '\'s cap';
    return NAMES[s.resource] + ': it needs ' + f(s.needed) + ', only ' + f(s.free) + ' is free ' + where + ' (' + f(s.short) + ' short).';
  });
  const way = d.proposal && d.proposal.length
    ? 'To make room, ' + d.way_out + ' ' + d.proposal.join(', ') + ' (less important), or choose a smaller service.'
    : 'Nothing less important can make room; remove a service or ask the operator for more capacity.';
  return [el('strong', { text: 'Not enough room for ' + d.service + '. ' }),
    el('span', { class: 'plain', text: parts.join(' ') + ' ' + way }),
    el('details', {}, el('summary', { text: 'The gateway\'s words' }), el('p', { text: e.message }))];
}

function explainError(e) {
  if (e.body && e.body.code === 'admission-refused') return explainRefusal(e).map((n) => n.textContent).join(' ');
  return e.message;
}

async function install(stop) {
  if (!pending) return;
  const { blob, label } = pending;
  const q = stop ? '?stop=' + encodeURIComponent(stop.join(',')) : '';
  await api('POST', '/v1/services' + q, blob, 'application/octet-stream');
  pending = null;
  $('install').disabled = true;
  $('install').textContent = 'Install';
  $('install-room').hidden = true;
  $('verdict').className = 'ok';
  $('verdict').textContent = label + ' is installed and starting.';
  $('package').value = '';
}

document.addEventListener('DOMContentLoaded', async () => {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('package').addEventListener('change', (ev) => {
    const f = ev.target.files[0];
    if (f) check(f, f.name);
  });
  $('install').addEventListener('click', (ev) => run(ev.target, () => install(null)));
  $('install-room').addEventListener('click', (ev) => run(ev.target, () => install(pending && pending.stop)));
  try {
    start(await api('GET', '/console/session'));
  } catch (_) {
    loggedOut('');
  }
});
