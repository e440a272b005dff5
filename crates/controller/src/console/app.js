// The SHG fleet console: a client of the controller's /v1 API, logged in by a cookie session.
// No framework, no build step; every text goes in through textContent.
'use strict';

const $ = (id) => document.getElementById(id);
const POLL_MS = 3000;
let session = null; // {realm, provider, csrf}
let poller = null;

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

function bytes(n) {
  if (n == null) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)) + ' ' + u[i];
}
const millicores = (m) => (m / 1000).toFixed(2);
function ago(ms) {
  if (ms == null) return 'never';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 120 ? s + ' s ago' : Math.round(s / 60) + ' min ago';
}
const labels = (l) => Object.entries(l || {}).map(([k, v]) => k + '=' + v).join(', ');

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (session && session.csrf && method !== 'GET') headers['X-CSRF-Token'] = session.csrf;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  const json = text ? JSON.parse(text) : null;
  if (r.status === 401) { showLogin(); throw new Error(json ? json.message : 'logged out'); }
  if (!r.ok) throw new Error(json ? json.message : r.statusText);
  return json;
}

function notice(text, bad) {
  const n = $('notice');
  n.textContent = text;
  n.className = bad ? 'error' : '';
  n.hidden = !text;
}

function fill(table, rows) {
  const body = table.tBodies[0];
  body.replaceChildren(...rows);
}

function selector() {
  return $('selector').value.split(',').map((s) => s.trim()).filter((s) => s.includes('=')).join(',');
}

async function refreshGateways() {
  if (session.realm !== 'operator') return;
  const sel = selector();
  const rows = await api('GET', '/v1/gateways' + (sel ? '?selector=' + encodeURIComponent(sel) : ''));
  const want = $('state').value;
  const state = (g) => (g.revoked ? 'revoked' : g.online ? 'online' : 'offline');
  fill($('gateways'), rows.filter((g) => !want || state(g) === want).map((g) => el('tr', { 'data-gateway': g.id },
    el('td', { text: g.id }), el('td', { class: state(g), text: state(g) }),
    el('td', { text: String(g.services) }), el('td', { text: ago(g.last_contact_ms) }),
    el('td', { text: labels(g.labels) }))));
}

async function control(id, action) {
  try {
    await api('POST', '/v1/deployments/' + encodeURIComponent(id) + '/' + action, {});
    notice('deployment ' + id + ': ' + action + ' done');
    await refresh();
  } catch (e) { notice(e.message, true); }
}

async function refreshDeployments() {
  const ds = await api('GET', '/v1/deployments');
  $('deployments').replaceChildren(...ds.map((d) => {
    const box = el('div', { class: 'deployment', 'data-deployment': d.id });
    box.append(el('h3', { text: d.service + ' ' + d.version + ' (' + d.provider + ') — ' + d.id }));
    box.append(el('p', {}, el('span', { class: d.state, text: d.state }),
      el('span', { text: ' · wave ' + (d.wave + 1) + ' of ' + d.waves.length + ' (' + d.waves.join(', ') +
        ') · soak ' + d.soak_s + ' s · max failures ' + d.max_failures })));
    if (d.reason) box.append(el('p', { class: 'reason', text: d.reason }));
    if (d.state === 'running') box.append(el('button', { type: 'button', class: 'pause', text: 'Pause' }));
    if (d.state === 'paused') box.append(el('button', { type: 'button', class: 'resume', text: 'Resume' }));
    if (d.state === 'running' || d.state === 'paused') box.append(el('button', { type: 'button', class: 'cancel', text: 'Cancel' }));
    for (const b of box.querySelectorAll('button')) b.addEventListener('click', () => control(d.id, b.className));
    // Wave by wave: the gateways each wave reached, then those not reached yet.
    const waves = new Map();
    for (const t of d.targets) {
      const key = t.wave == null ? 'not reached yet' : 'wave ' + (t.wave + 1);
      if (!waves.has(key)) waves.set(key, []);
      waves.get(key).push(t);
    }
    const table = el('table', {}, el('thead', {}, el('tr', {}, el('th', { text: 'Wave' }), el('th', { text: 'Gateway' }),
      el('th', { text: 'Outcome' }), el('th', { text: 'Reason' }))), el('tbody'));
    for (const [wave, ts] of [...waves.entries()].sort()) {
      for (const t of ts) {
        table.tBodies[0].append(el('tr', { 'data-target': t.gateway_id }, el('td', { text: wave }),
          el('td', { text: t.gateway_id }), el('td', { class: t.outcome, text: t.outcome }),
          el('td', { class: 'reason', text: t.reason || '' })));
      }
    }
    box.append(table);
    return box;
  }));
}

async function refreshServices() {
  const ss = await api('GET', '/v1/services');
  fill($('services'), ss.map((s) => el('tr', { 'data-service': s.provider + '/' + s.name },
    el('td', { text: s.name }), el('td', { text: s.provider }), el('td', { text: String(s.gateways) }),
    el('td', { text: String(s.running) }), el('td', { class: 'healthy', text: String(s.healthy) }),
    el('td', { class: s.failing ? 'failed' : '', text: String(s.failing) }),
    el('td', { text: millicores(s.cpu_millicores) + ' / ' + millicores(s.cpu_reserved_millicores) }),
    el('td', { text: bytes(s.memory_bytes) + ' / ' + bytes(s.memory_reserved_bytes) }))));
}

async function approve(e) {
  try {
    await api('POST', '/v1/packages/' + [e.provider, e.name, e.version].map(encodeURIComponent).join('/') + '/approve', {});
    notice(e.name + ' ' + e.version + ' approved for the fleet');
    await refresh();
  } catch (err) { notice(err.message, true); }
}

async function refreshCatalog() {
  const entries = await api('GET', '/v1/catalog');
  fill($('catalog'), entries.map((e) => {
    const action = el('td');
    if (!e.approved && session.realm === 'operator') {
      const b = el('button', { type: 'button', class: 'approve', text: 'Approve' });
      b.addEventListener('click', () => approve(e));
      action.append(b);
    }
    return el('tr', { 'data-package': e.provider + '/' + e.name + '/' + e.version },
      el('td', { text: e.name }), el('td', { text: e.provider }), el('td', { text: e.version }),
      el('td', { text: bytes(e.size) }), el('td', { class: e.approved ? 'healthy' : 'pending', text: e.approved ? 'yes' : 'no' }),
      action);
  }));
}

async function refresh() {
  try {
    await Promise.all([refreshGateways(), refreshDeployments(), refreshServices(), refreshCatalog()]);
  } catch (e) { notice(e.message, true); }
}

function showLogin() {
  session = null;
  if (poller) clearInterval(poller);
  poller = null;
  delete document.body.dataset.realm;
  $('app').hidden = true;
  $('logout').hidden = true;
  $('who').textContent = '';
  $('login').hidden = false;
}

function start(s) {
  session = s;
  document.body.dataset.realm = s.realm;
  $('who').textContent = s.realm === 'provider' ? 'provider ' + s.provider : s.realm;
  $('login').hidden = true;
  $('app').hidden = false;
  $('logout').hidden = false;
  $('gateways-panel').hidden = s.realm !== 'operator';
  refresh();
  poller = setInterval(refresh, POLL_MS);
}

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  $('login-error').textContent = '';
  const r = await fetch('/console/login', { method: 'POST', credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ token: $('token').value }) });
  const json = await r.json().catch(() => null);
  if (!r.ok) { $('login-error').textContent = json ? json.message : r.statusText; return; }
  $('token').value = '';
  start(json);
});
$('logout').addEventListener('click', async () => {
  await fetch('/console/logout', { method: 'POST', credentials: 'same-origin',
    headers: session && session.csrf ? { 'X-CSRF-Token': session.csrf } : {} });
  showLogin();
});
$('filter').addEventListener('input', refreshGateways);
$('filter').addEventListener('submit', (ev) => { ev.preventDefault(); refreshGateways(); });

// An open session (a reload) goes straight in.
fetch('/console/session', { credentials: 'same-origin', headers: { Accept: 'application/json' } })
  .then((r) => (r.ok ? r.json() : null))
  .then((s) => (s ? start(s) : showLogin()))
  .catch(showLogin);
