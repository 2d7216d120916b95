// The console's logic: a client of the relay's REST API (/admin/..., /api/usage/...), nothing more.
//
// Safety rules this file keeps (the page runs with the admin's token):
// - API strings reach the DOM only as text (textContent / text nodes), never as HTML.
// - The admin JWT lives in sessionStorage (gone with the tab), never localStorage; a key holder's
//   proxy key lives in a variable only. A newly created key is shown once, then wiped.
// - Every request omits ambient credentials (no cookies, no browser Basic-auth prompt).
'use strict';

(function () {
  const SESSION_ITEM = 'relay.console.admin';
  const PAGE = 20;
  const AUDIT_PAGE = 50;

  // ---- small helpers --------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  /** Builds an element; children are nodes or strings (strings become text nodes, never HTML). */
  const el = (tag, props, ...children) => window.RelayDom.build(null, tag, props, children);
  const clear = window.RelayDom.clear;

  function show(node, visible) {
    node.hidden = !visible;
  }

  const intFmt = new Intl.NumberFormat('en-US');
  function fmtInt(n) {
    return n === null || n === undefined ? '—' : intFmt.format(n);
  }

  function fmtCost(n) {
    if (n === null || n === undefined) return '—';
    if (n === 0) return '$0';
    return '$' + (Math.abs(n) < 0.01 ? n.toFixed(6) : n.toFixed(2));
  }

  /** ISO 8601 → "2025-01-31 10:00 UTC" (UTC, so every reader sees the same time). */
  function fmtTime(iso, seconds) {
    if (!iso) return '—';
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    return d.toISOString().slice(0, seconds ? 19 : 16).replace('T', ' ') + ' UTC';
  }

  function isExpired(key) {
    return !!key.expires_at && new Date(key.expires_at) <= new Date();
  }

  /** A usage bar: width from a percentage, colour from how close to the limit. */
  function bar(pct) {
    const inner = el('div');
    const p = Math.max(0, Math.min(100, pct || 0));
    inner.style.width = p + '%';
    inner.className = p >= 100 ? 'full' : p >= 80 ? 'warn' : '';
    return el('div', { className: 'bar' }, inner);
  }

  function stat(label, value, id) {
    const v = el('div', { className: 'value' }, value);
    if (id) v.id = id;
    return el('div', { className: 'stat' }, el('div', { className: 'label' }, label), v);
  }

  function notice(msg, kind) {
    const n = $('notice');
    n.textContent = msg || '';
    n.className = 'notice ' + (kind || 'info');
    show(n, !!msg);
  }

  function showError(node, msg) {
    node.textContent = msg || '';
    show(node, !!msg);
  }

  // ---- HTTP -----------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** One API call; resolves to the parsed JSON, rejects with ApiError(status, error.message). */
  async function call(method, path, headers, body) {
    const h = Object.assign({ Accept: 'application/json' }, headers);
    const init = { method, headers: h, credentials: 'omit', cache: 'no-store' };
    if (body !== undefined) {
      h['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, 'The relay did not answer: ' + e.message);
    }
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (!res.ok) {
      const msg = (data && data.error && data.error.message) || (data && data.detail) ||
        'HTTP ' + res.status + ' ' + res.statusText;
      throw new ApiError(res.status, msg);
    }
    return data;
  }

  // ---- admin session --------------------------------------------------------------------------
  let expiryTimer = null;

  function loadSession() {
    try {
      const s = JSON.parse(sessionStorage.getItem(SESSION_ITEM) || 'null');
      if (s && s.token && s.expires > Date.now()) return s;
    } catch (e) {
      /* a damaged entry is as good as none */
    }
    sessionStorage.removeItem(SESSION_ITEM);
    return null;
  }

  function armExpiry(session) {
    clearTimeout(expiryTimer);
    const left = session.expires - Date.now();
    expiryTimer = setTimeout(() => signOut('Your session expired. Sign in again.'),
      Math.min(Math.max(left, 0), 2147483647));
  }

  async function signIn(user, password) {
    // btoa takes Latin-1 only: encode as UTF-8 first so any password works.
    const bytes = new TextEncoder().encode(user + ':' + password);
    const basic = btoa(String.fromCharCode(...bytes));
    const js = await call('POST', '/admin/login', { Authorization: 'Basic ' + basic });
    const session = {
      token: js.access_token,
      user: user,
      expires: Date.now() + (js.expires_in || 1800) * 1000,
    };
    sessionStorage.setItem(SESSION_ITEM, JSON.stringify(session));
    armExpiry(session);
    return session;
  }

  function signOut(message) {
    clearTimeout(expiryTimer);
    sessionStorage.removeItem(SESSION_ITEM);
    wipeNewKey();
    clear($('keys-table').tBodies[0]);
    clear($('totals'));
    showError($('login-error'), message || '');
    location.hash = '#admin';
    route();
  }

  /** An admin API call; a 401 ends the session and returns to the sign-in form. */
  async function admin(method, path, body) {
    const s = loadSession();
    if (!s) {
      signOut('Your session expired. Sign in again.');
      throw new ApiError(401, 'not signed in');
    }
    try {
      return await call(method, path, { Authorization: 'Bearer ' + s.token }, body);
    } catch (e) {
      if (e.status === 401) signOut('Signed out: ' + e.message + '. Sign in again.');
      throw e;
    }
  }

  /** Runs an admin action; failures other than 401 are shown in the notice line. */
  async function attempt(fn) {
    try {
      await fn();
    } catch (e) {
      if (e.status !== 401) notice(e.message, 'error');
    }
  }

  // ---- admin: keys ----------------------------------------------------------------------------
  const keysState = { skip: 0, total: 0, status: 'all' };
  let tiers = [];

  async function loadTotals() {
    const js = await admin('GET', '/admin/usage?limit=1');
    const t = js.totals || {};
    const box = $('totals');
    clear(box);
    box.append(stat('Keys', fmtInt(t.total_keys)), stat('Requests', fmtInt(t.total_requests)),
      stat('Tokens', fmtInt(t.total_tokens)), stat('Cost', fmtCost(t.total_cost)),
      stat('Errors', fmtInt(t.error_count)));
  }

  async function loadKeys() {
    const q = new URLSearchParams({ skip: keysState.skip, limit: PAGE, status: keysState.status });
    const js = await admin('GET', '/admin/api-keys?' + q);
    keysState.total = js.total;
    if (js.items.length === 0 && keysState.skip > 0 && js.total > 0) {
      // The last key of the last page went away: step back a page.
      keysState.skip = Math.max(0, keysState.skip - PAGE);
      return loadKeys();
    }
    const body = $('keys-table').tBodies[0];
    clear(body);
    for (const k of js.items) body.appendChild(keyRow(k));
    show($('keys-empty'), js.items.length === 0);
    const from = js.items.length ? keysState.skip + 1 : 0;
    $('keys-range').textContent = from + '–' + (keysState.skip + js.items.length) + ' of ' + js.total;
    $('keys-prev').disabled = keysState.skip === 0;
    $('keys-next').disabled = keysState.skip + PAGE >= js.total;
  }

  /** The table and the totals above it, after a change that affects both. */
  function reloadKeys() {
    return Promise.all([loadKeys(), loadTotals()]);
  }

  function keyStatus(k) {
    if (!k.is_active) return ['disabled', 'off'];
    if (isExpired(k)) return ['expired', 'off'];
    return ['active', 'on'];
  }

  function keyRow(k) {
    const [status, cls] = keyStatus(k);
    const limit = k.token_limit ? fmtInt(k.token_limit) : '∞';
    const usage = el('td', { className: 'usage-col' },
      el('div', { className: 'usage-text' }, fmtInt(k.token_used) + ' / ' + limit),
      k.token_limit ? bar(k.usage_percentage) : null);
    usage.title = k.token_limit ? k.usage_percentage + ' % used' : 'unlimited';
    const actions = el('td', { className: 'actions' },
      el('button', { type: 'button', className: 'small', dataset: { action: 'usage' },
        onclick: () => attempt(() => openUsage(k)) }, 'Usage'),
      el('button', { type: 'button', className: 'small', dataset: { action: 'edit' },
        onclick: () => openKeyForm(k) }, 'Edit'),
      k.is_active
        ? el('button', { type: 'button', className: 'small', dataset: { action: 'disable' },
          onclick: () => attempt(() => setActive(k, false)) }, 'Disable')
        : el('button', { type: 'button', className: 'small', dataset: { action: 'enable' },
          onclick: () => attempt(() => setActive(k, true)) }, 'Enable'),
      el('button', { type: 'button', className: 'small', dataset: { action: 'rotate' },
        onclick: () => attempt(() => rotateKey(k)) }, 'Rotate'),
      el('button', { type: 'button', className: 'small danger', dataset: { action: 'delete' },
        onclick: () => attempt(() => deleteKey(k)) }, 'Delete'));
    const name = el('td', { className: 'name' }, k.name);
    if (k.description) name.title = k.description;
    return el('tr', { dataset: { keyId: k.id } },
      name,
      el('td', { className: 'nowrap' }, el('code', {}, k.key_prefix)),
      el('td', {}, k.rate_limit_tier),
      usage,
      el('td', { className: 'num' }, fmtInt(k.request_count)),
      el('td', {}, el('span', { className: 'badge ' + cls }, status)),
      el('td', {}, k.expires_at ? fmtTime(k.expires_at) : 'never'),
      actions);
  }

  async function setActive(k, active) {
    await admin('POST', '/admin/api-keys/' + encodeURIComponent(k.id) +
      (active ? '/enable' : '/disable'));
    notice('Key “' + k.name + '” ' + (active ? 'enabled.' : 'disabled.'), 'ok');
    await reloadKeys();
  }

  async function rotateKey(k) {
    const ok = await confirmDialog('Rotate key “' + k.name + '”? The current key stops working ' +
      'at once; clients need the new one.', 'Rotate');
    if (!ok) return;
    const js = await admin('POST', '/admin/api-keys/' + encodeURIComponent(k.id) + '/rotate');
    showNewKey(js.name, js.api_key, 'rotated');
    await reloadKeys();
  }

  async function deleteKey(k) {
    const ok = await confirmDialog('Delete key “' + k.name + '”? Clients using it get 401 from ' +
      'now on. Its usage history is kept.', 'Delete');
    if (!ok) return;
    await admin('DELETE', '/admin/api-keys/' + encodeURIComponent(k.id));
    notice('Key “' + k.name + '” deleted.', 'ok');
    if ($('key-usage').dataset.keyId === k.id) show($('key-usage'), false);
    await reloadKeys();
  }

  // The full key, shown once: kept out of every other place and wiped when dismissed.
  function showNewKey(name, apiKey, verb) {
    $('new-key-title').textContent = 'Key “' + name + '” ' + verb;
    $('new-key-value').textContent = apiKey;
    $('copy-status').textContent = '';
    show($('new-key'), true);
    $('new-key').scrollIntoView({ block: 'nearest' });
  }

  function wipeNewKey() {
    $('new-key-value').textContent = '';
    show($('new-key'), false);
  }

  async function copyNewKey() {
    const text = $('new-key-value').textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch (e) {
      // No Clipboard API (plain http to a remote host): copy from a selection instead.
      const range = document.createRange();
      range.selectNodeContents($('new-key-value'));
      const sel = getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      if (!document.execCommand('copy')) {
        $('copy-status').textContent = 'Copy blocked by the browser: the key is selected, ' +
          'press Ctrl+C.';
        return;
      }
      sel.removeAllRanges();
    }
    $('copy-status').textContent = 'Copied to the clipboard.';
  }

  // ---- admin: create / edit form -------------------------------------------------------------
  let editing = null; // the key being edited, or null when creating

  function fillTierSelect(selected) {
    const sel = $('key-tier');
    clear(sel);
    const names = tiers.map((t) => t.name);
    if (selected && !names.includes(selected)) names.push(selected);
    for (const n of names) sel.appendChild(el('option', { value: n }, n));
    sel.value = selected || (names.includes('basic') ? 'basic' : names[0] || '');
  }

  async function openKeyForm(k) {
    editing = k || null;
    const f = $('key-form');
    f.reset();
    showError($('key-form-error'), '');
    $('key-form-title').textContent = k ? 'Edit key “' + k.name + '”' : 'New key';
    $('key-form-submit').textContent = k ? 'Save' : 'Create key';
    $('key-expires').placeholder = k ? (k.expires_at ? 'unchanged' : 'never') : 'never';
    if (k) {
      $('key-name').value = k.name;
      $('key-description').value = k.description || '';
      $('key-limit').value = k.token_limit;
      for (const [id, field] of COST_FIELDS) {
        $(id).value = k[field] === null || k[field] === undefined ? '' : k[field];
      }
      $('key-cost-models').value = k.model_cost_limits ? JSON.stringify(k.model_cost_limits) : '';
    }
    show(f, true);
    try {
      tiers = await admin('GET', '/admin/rate-limit-tiers'); // fresh: another admin may edit them
    } catch (e) {
      showError($('key-form-error'), 'Could not load the tiers: ' + e.message);
    }
    fillTierSelect(k ? k.rate_limit_tier : null);
    $('key-name').focus();
  }

  const COST_FIELDS = [['key-cost-daily', 'daily_cost_limit'],
    ['key-cost-weekly', 'weekly_cost_limit'], ['key-cost-monthly', 'monthly_cost_limit'],
    ['key-cost-total', 'cost_limit']];

  /** The budget fields of the form; an empty field removes the budget when editing. */
  function costFields(body) {
    for (const [id, field] of COST_FIELDS) {
      const v = $(id).value.trim();
      if (v !== '') body[field] = Number(v);
      else if (editing) body[field] = null;
    }
    const models = $('key-cost-models').value.trim();
    if (models === '') {
      if (editing) body.model_cost_limits = null;
      return;
    }
    try {
      body.model_cost_limits = JSON.parse(models);
    } catch (e) {
      // The server names the field in its answer; a string is refused with that message.
      body.model_cost_limits = models;
    }
  }

  function keyFormBody() {
    const body = { name: $('key-name').value.trim() };
    const desc = $('key-description').value.trim();
    if (desc || editing) body.description = desc || null;
    const limit = $('key-limit').value.trim();
    if (limit !== '') body.token_limit = Number(limit);
    if ($('key-tier').value) body.rate_limit_tier = $('key-tier').value;
    const days = $('key-expires').value.trim();
    if (days !== '') body.expires_in_days = Number(days);
    costFields(body);
    return body;
  }

  async function submitKeyForm(ev) {
    ev.preventDefault();
    const body = keyFormBody();
    const btn = $('key-form-submit');
    btn.disabled = true;
    try {
      if (editing) {
        await admin('PATCH', '/admin/api-keys/' + encodeURIComponent(editing.id), body);
        notice('Key “' + body.name + '” saved.', 'ok');
      } else {
        const js = await admin('POST', '/admin/api-keys', body);
        showNewKey(js.name, js.api_key, 'created');
      }
      show($('key-form'), false);
      editing = null;
      await reloadKeys();
    } catch (e) {
      if (e.status !== 401) showError($('key-form-error'), e.message);
    } finally {
      btn.disabled = false;
    }
  }

  // ---- charts ---------------------------------------------------------------------------------
  /** Tokens per day by kind and requests, from a /usage/daily answer (charts.js, plain SVG). */
  function drawChart(node, days) {
    window.RelayCharts.daily(node, days);
  }

  function usageStats(box, js) {
    clear(box);
    box.append(stat('Requests', fmtInt(js.total_requests)), stat('Tokens', fmtInt(js.total_tokens)),
      stat('Input', fmtInt(js.total_prompt_tokens)), stat('Output', fmtInt(js.total_completion_tokens)),
      stat('Cache write / read', fmtInt(js.total_cache_creation_tokens) + ' / ' +
        fmtInt(js.total_cache_read_tokens)),
      stat('Cost', fmtCost(js.total_cost)), stat('Errors', fmtInt(js.error_count)));
  }

  async function openUsage(k) {
    const base = '/admin/api-keys/' + encodeURIComponent(k.id) + '/usage';
    const [daily, totals] = await Promise.all([admin('GET', base + '/daily?days=30'),
      admin('GET', base)]);
    $('key-usage').dataset.keyId = k.id;
    $('key-usage-name').textContent = '“' + k.name + '”';
    usageStats($('key-usage-totals'), totals);
    drawChart($('key-usage-chart'), daily);
    show($('key-usage'), true);
    $('key-usage').scrollIntoView({ block: 'nearest' });
    for (const fn of keyOpenHooks) await fn(k);
  }

  // ---- admin: audit log ----------------------------------------------------------------------
  const auditState = { skip: 0 };

  async function loadAudit() {
    const q = new URLSearchParams({ skip: auditState.skip, limit: AUDIT_PAGE });
    const js = await admin('GET', '/admin/audit-log?' + q);
    const body = $('audit-table').tBodies[0];
    clear(body);
    for (const a of js.items) {
      const details = a.details === null || a.details === undefined ? '' :
        typeof a.details === 'string' ? a.details : JSON.stringify(a.details);
      body.appendChild(el('tr', {},
        el('td', { className: 'nowrap' }, fmtTime(a.created_at, true)),
        el('td', {}, el('code', {}, a.action)),
        el('td', { className: 'mono nowrap' }, a.target || ''),
        el('td', {}, a.actor || ''),
        el('td', {}, a.client_ip || ''),
        el('td', { className: 'mono' }, details)));
    }
    const from = js.items.length ? auditState.skip + 1 : 0;
    $('audit-range').textContent = from + '–' + (auditState.skip + js.items.length) + ' of ' + js.total;
    $('audit-prev').disabled = auditState.skip === 0;
    $('audit-next').disabled = auditState.skip + AUDIT_PAGE >= js.total;
  }

  // The admin tabs: name → loader, in tab-bar order. Other files add theirs with registerTab
  // (tiers.js, dashboard.js, ...) before the page is wired; one may ask to be the default.
  const TABS = new Map([['keys', reloadKeys], ['audit', loadAudit]]);
  let defaultTab = 'keys';

  function registerTab(name, loader, opts) {
    TABS.set(name, loader);
    if (opts && opts.default) defaultTab = name;
  }

  function selectTab(name) {
    for (const t of TABS.keys()) {
      const tab = $('tab-' + t);
      if (!tab) continue;
      tab.classList.toggle('active', t === name);
      tab.setAttribute('aria-selected', String(t === name));
      show($(t + '-panel'), t === name);
    }
    notice('');
    return attempt(TABS.get(name));
  }

  // ---- confirmation dialog --------------------------------------------------------------------
  function confirmDialog(text, okLabel) {
    const d = $('confirm');
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = okLabel;
    return new Promise((resolve) => {
      const done = (v) => {
        $('confirm-ok').onclick = $('confirm-cancel').onclick = d.oncancel = null;
        if (d.open) d.close();
        resolve(v);
      };
      $('confirm-ok').onclick = () => done(true);
      $('confirm-cancel').onclick = () => done(false);
      d.oncancel = () => done(false); // Escape
      d.showModal();
      $('confirm-cancel').focus();
    });
  }

  // ---- key holder -----------------------------------------------------------------------------
  let holderKey = null; // in memory only, on purpose

  function holderCall(path) {
    return call('GET', path, { 'x-api-key': holderKey });
  }

  async function loadHolder() {
    const [quota, daily, logs] = await Promise.all([holderCall('/api/usage/quota'),
      holderCall('/api/usage/daily?days=30'), holderCall('/api/usage/logs?limit=50')]);
    renderQuota(quota);
    drawChart($('holder-chart'), daily);
    renderLogs(logs.items);
  }

  function renderQuota(q) {
    const box = $('quota-stats');
    clear(box);
    const unlimited = !q.token_limit;
    const reqs = q.requests_limit === null || q.requests_limit === undefined
      ? 'unlimited' : fmtInt(q.requests_remaining) + ' / ' + fmtInt(q.requests_limit);
    const status = !q.is_active ? 'disabled' : q.is_expired ? 'expired'
      : q.is_quota_exceeded ? 'quota spent' : 'active';
    box.append(stat('Used', fmtInt(q.token_used), 'quota-used'),
      stat('Limit', unlimited ? 'unlimited' : fmtInt(q.token_limit), 'quota-limit'),
      stat('Remaining', unlimited ? 'unlimited' : fmtInt(q.token_remaining), 'quota-remaining'),
      stat('Tier', q.rate_limit_tier, 'quota-tier'),
      stat('Requests left in window', reqs, 'quota-requests'),
      stat('Status', status, 'quota-status'));
    const inner = $('quota-bar');
    const pct = unlimited ? 0 : Math.min(100, q.usage_percentage || 0);
    inner.style.width = pct + '%';
    inner.className = pct >= 100 ? 'full' : pct >= 80 ? 'warn' : '';
    const parts = [unlimited ? 'No token limit.' : q.usage_percentage + ' % of the quota used.'];
    if (q.reset_at) parts.push('Next request slot frees at ' + fmtTime(q.reset_at, true) + '.');
    parts.push(q.expires_at ? 'Key expires ' + fmtTime(q.expires_at) + '.' : 'Key does not expire.');
    $('quota-line').textContent = parts.join(' ');
    renderBudgets(q.budgets || []);
  }

  /** One row per budget; cells carry ids (budget-<period>[-<n>]-spent) for tests and scripts. */
  function renderBudgets(budgets) {
    const body = $('budgets-table').tBodies[0];
    clear(body);
    show($('budgets-card'), budgets.length > 0);
    let n = 0;
    for (const b of budgets) {
      const id = 'budget-' + b.period + (b.models ? '-' + (n++) : '');
      const cell = (text, suffix, usd) => {
        const td = el('td', {}, text);
        if (suffix) td.id = id + '-' + suffix;
        if (usd !== undefined) {
          td.dataset.usd = String(usd); // the exact figure; the text is rounded for reading
          td.title = '$' + usd;
        }
        return td;
      };
      body.appendChild(el('tr', {}, cell(b.period), cell(b.models ? b.models.join(', ') : 'all'),
        cell(fmtCost(b.limit), 'limit', b.limit), cell(fmtCost(b.spent), 'spent', b.spent),
        cell(fmtCost(b.remaining), 'remaining', b.remaining),
        cell(b.resets_at ? fmtTime(b.resets_at) : 'never', 'resets')));
    }
  }

  function renderLogs(items) {
    const body = $('logs-table').tBodies[0];
    clear(body);
    for (const r of items) {
      const cache = (r.cache_creation_tokens || 0) + (r.cache_read_tokens || 0);
      const st = el('td', { className: 'num' },
        el('span', { className: 'badge ' + (r.is_error ? 'off' : 'on') }, r.response_status));
      if (r.error_message) st.title = r.error_message;
      body.appendChild(el('tr', {},
        el('td', { className: 'nowrap' }, fmtTime(r.created_at, true)),
        el('td', {}, r.model || '—'),
        st,
        el('td', { className: 'num' }, fmtInt(r.prompt_tokens)),
        el('td', { className: 'num' }, fmtInt(r.completion_tokens)),
        el('td', { className: 'num' }, fmtInt(cache)),
        el('td', { className: 'num tokens' }, fmtInt(r.total_tokens) + (r.estimated ? '*' : '')),
        el('td', { className: 'num' }, fmtCost(r.total_cost))));
    }
    show($('logs-empty'), items.length === 0);
  }

  async function submitHolder(ev) {
    ev.preventDefault();
    const key = $('holder-key').value.trim();
    $('holder-key').value = ''; // the field would otherwise keep it in the DOM
    holderKey = key;
    showError($('holder-error'), '');
    $('holder-submit').disabled = true;
    try {
      await loadHolder();
      route();
    } catch (e) {
      holderKey = null;
      showError($('holder-error'), e.message);
    } finally {
      $('holder-submit').disabled = false;
    }
  }

  function forgetHolder(message) {
    holderKey = null;
    clear($('logs-table').tBodies[0]);
    clear($('quota-stats'));
    renderBudgets([]);
    clear($('holder-chart'));
    showError($('holder-error'), message || '');
    route();
  }

  async function refreshHolder() {
    try {
      await loadHolder();
    } catch (e) {
      if (e.status === 401) forgetHolder(e.message);
      else notice(e.message, 'error');
    }
  }

  // ---- views ----------------------------------------------------------------------------------
  let shownAdmin = false;
  let lastView = null;

  function route() {
    const view = location.hash === '#usage' ? 'usage' : 'admin';
    if (view !== lastView) notice(''); // a message belongs to the view it came from
    lastView = view;
    const session = loadSession();
    $('nav-admin').classList.toggle('active', view === 'admin');
    $('nav-usage').classList.toggle('active', view === 'usage');
    show($('session'), !!session);
    $('session-user').textContent = session ? 'Signed in as ' + session.user : '';
    show($('admin-login'), view === 'admin' && !session);
    show($('admin'), view === 'admin' && !!session);
    show($('holder-login'), view === 'usage' && !holderKey);
    show($('holder'), view === 'usage' && !!holderKey);
    if (view !== 'admin' || !session) shownAdmin = false;
    if (view === 'admin' && session && !shownAdmin) {
      shownAdmin = true;
      armExpiry(session);
      selectTab(defaultTab);
    }
    if (view === 'admin' && !session) $('login-user').focus();
    if (view === 'usage' && !holderKey) $('holder-key').focus();
  }

  async function submitLogin(ev) {
    ev.preventDefault();
    const pw = $('login-password');
    showError($('login-error'), '');
    $('login-submit').disabled = true;
    try {
      await signIn($('login-user').value, pw.value);
      pw.value = '';
      route();
    } catch (e) {
      showError($('login-error'), e.message);
      pw.select();
    } finally {
      $('login-submit').disabled = false;
    }
  }

  function wire() {
    $('login-user').value = 'admin';
    $('login-form').addEventListener('submit', submitLogin);
    $('sign-out').addEventListener('click', () => signOut(''));
    for (const t of TABS.keys()) {
      if ($('tab-' + t)) $('tab-' + t).addEventListener('click', () => selectTab(t));
    }
    $('keys-status').addEventListener('change', () => {
      keysState.status = $('keys-status').value;
      keysState.skip = 0;
      attempt(loadKeys);
    });
    $('keys-refresh').addEventListener('click', () => attempt(reloadKeys));
    $('keys-prev').addEventListener('click', () => {
      keysState.skip = Math.max(0, keysState.skip - PAGE);
      attempt(loadKeys);
    });
    $('keys-next').addEventListener('click', () => {
      keysState.skip += PAGE;
      attempt(loadKeys);
    });
    $('new-key-button').addEventListener('click', () => openKeyForm(null));
    $('key-form').addEventListener('submit', submitKeyForm);
    $('key-form-cancel').addEventListener('click', () => show($('key-form'), false));
    $('copy-key').addEventListener('click', copyNewKey);
    $('new-key-done').addEventListener('click', wipeNewKey);
    $('key-usage-close').addEventListener('click', () => show($('key-usage'), false));
    $('audit-prev').addEventListener('click', () => {
      auditState.skip = Math.max(0, auditState.skip - AUDIT_PAGE);
      attempt(loadAudit);
    });
    $('audit-next').addEventListener('click', () => {
      auditState.skip += AUDIT_PAGE;
      attempt(loadAudit);
    });
    $('holder-form').addEventListener('submit', submitHolder);
    $('holder-refresh').addEventListener('click', refreshHolder);
    $('holder-forget').addEventListener('click', () => forgetHolder(''));
    window.addEventListener('hashchange', route);
    route();
  }

  // What the console's other files (dashboard.js, tiers.js, ...) build on.
  const keyOpenHooks = [];
  window.RelayConsole = Object.freeze({
    $, el, clear, show, fmtInt, fmtCost, fmtTime, stat, bar, notice, showError, admin, attempt,
    confirmDialog, registerTab, selectTab, openUsage, usageStats,
    onKeyOpen: (fn) => keyOpenHooks.push(fn),
  });

  document.addEventListener('DOMContentLoaded', wire);
})();
