// The console's dashboard tab (totals for today / 7 / 30 days, the daily chart, cost by model, top
// keys, recent errors, upstream health) and the request log of a key's page.
// Only the admin REST API; every string from it reaches the page as text.
'use strict';

(function () {
  const C = window.RelayConsole;
  const { $, el, clear, show, fmtInt, fmtCost, fmtTime, stat, admin, attempt } = C;
  const Charts = window.RelayCharts;
  const PERIODS = [['today', 'Today', 1], ['7d', 'Last 7 days', 7], ['30d', 'Last 30 days', 30]];
  const LOG_PAGE = 50;

  /** The UTC day n days before today, as YYYY-MM-DD (the statistics count UTC days). */
  function utcDay(n) {
    return new Date(Date.now() - n * 86400000).toISOString().slice(0, 10);
  }

  function range(days) {
    return 'start_date=' + utcDay(days - 1) + '&end_date=' + utcDay(0);
  }

  // ---- the dashboard ---------------------------------------------------------------------------
  function renderPeriods(results) {
    const box = $('dash-periods');
    clear(box);
    PERIODS.forEach(([id, label], i) => {
      const t = results[i].totals || {};
      box.appendChild(el('div', { className: 'period card', id: 'dash-' + id },
        el('h3', {}, label),
        el('div', { className: 'stats' },
          stat('Requests', fmtInt(t.total_requests), 'dash-' + id + '-requests'),
          stat('Tokens', fmtInt(t.total_tokens), 'dash-' + id + '-tokens'),
          stat('Cost', fmtCost(t.total_cost), 'dash-' + id + '-cost'),
          stat('Errors', fmtInt(t.error_count), 'dash-' + id + '-errors'))));
    });
  }

  function renderModels(summary) {
    const models = (summary.model_usage || []).slice()
      .sort((a, b) => b.total_cost - a.total_cost || b.request_count - a.request_count)
      .slice(0, 12);
    Charts.hbars($('dash-models'), models.map((m) => ({
      label: m.model || '(no model)', value: m.total_cost,
      text: fmtCost(m.total_cost) + ' · ' + fmtInt(m.request_count) + ' req',
    })), { label: 'Cost by model', empty: 'No requests in the last 30 days.' });
  }

  function renderTopKeys(overview) {
    const items = (overview.items || []).filter((k) => k.total_tokens > 0);
    Charts.hbars($('dash-top-keys'), items.map((k) => ({
      label: k.name, value: k.total_tokens, data: { keyId: k.api_key_id },
      text: fmtInt(k.total_tokens) + ' · ' + fmtCost(k.total_cost),
    })), {
      label: 'Top keys by tokens', empty: 'No key used any tokens in the last 30 days.',
      onclick: (it) => attempt(() => openKeyPage(it.data.keyId, it.label)),
    });
  }

  function renderErrors(logs, names) {
    const body = $('dash-errors').tBodies[0];
    clear(body);
    for (const r of logs.items) {
      const msg = el('td', { className: 'msg' }, r.error_message || '');
      body.appendChild(el('tr', {},
        el('td', { className: 'nowrap' }, fmtTime(r.created_at, true)),
        el('td', { className: 'name' }, names.get(r.api_key_id) || r.api_key_id.slice(0, 8)),
        el('td', {}, r.model || '—'),
        el('td', { className: 'num' }, el('span', { className: 'badge off' }, r.response_status)),
        el('td', {}, el('code', {}, r.error_code || '—')),
        msg));
    }
    show($('dash-errors-empty'), logs.items.length === 0);
  }

  const STATE_CLASS = { ok: 'on', cooling: 'warn', broken: 'off', disabled: 'muted' };

  /** Upstream health from GET /admin/upstreams; the card stays hidden while that answers 404. */
  async function loadUpstreams() {
    let js;
    try {
      js = await admin('GET', '/admin/upstreams');
    } catch (e) {
      if (e.status === 404 || e.status === 405) {
        show($('dash-upstreams-card'), false);
        return;
      }
      throw e;
    }
    const items = Array.isArray(js) ? js : (js && js.items) || [];
    const body = $('dash-upstreams').tBodies[0];
    clear(body);
    for (const u of items) {
      const state = u.state || (u.healthy ? 'ok' : 'broken');
      body.appendChild(el('tr', { dataset: { upstream: u.name || u.id } },
        el('td', { className: 'name' }, u.name || u.id || ''),
        el('td', { className: 'mono' }, u.url || ''),
        el('td', {}, el('span', { className: 'badge ' + (STATE_CLASS[state] || 'off') }, state)),
        el('td', { className: 'num' }, fmtInt(u.in_flight)),
        el('td', { className: 'num' }, fmtInt(u.priority) + ' / ' + fmtInt(u.weight)),
        el('td', {}, Array.isArray(u.models) && u.models.length ? u.models.join(', ') : 'all'),
        el('td', { className: 'nowrap' }, u.cooldown_until ? fmtTime(u.cooldown_until, true) : '—'),
        el('td', {}, u.source || '')));
    }
    show($('dash-upstreams-empty'), items.length === 0);
    show($('dash-upstreams-card'), true);
  }

  async function keyNames() {
    const js = await admin('GET', '/admin/api-keys?limit=1000');
    return new Map(js.items.map((k) => [k.id, k.name]));
  }

  async function loadDashboard() {
    const [periods, daily, summary, top, errors, names] = await Promise.all([
      Promise.all(PERIODS.map(([, , days]) => admin('GET', '/admin/usage?limit=1&' +
        range(days)))),
      admin('GET', '/admin/usage/daily?days=30'),
      admin('GET', '/admin/usage/summary?' + range(30)),
      admin('GET', '/admin/usage?sort=total_tokens&order=desc&limit=10&' + range(30)),
      admin('GET', '/admin/usage/logs?is_error=true&limit=10'),
      keyNames(),
    ]);
    renderPeriods(periods);
    Charts.daily($('dash-daily'), daily, { label: 'Tokens by kind and requests per day' });
    renderModels(summary);
    renderTopKeys(top);
    renderErrors(errors, names);
    await loadUpstreams();
    $('dash-updated').textContent = 'Updated ' + fmtTime(new Date().toISOString(), true);
  }

  // ---- a key's page: the request log with filters -------------------------------------------
  let logKey = null;
  const logState = { skip: 0 };

  async function openKeyPage(id, name) {
    await C.selectTab('keys');
    await C.openUsage({ id: id, name: name });
  }

  function logQuery() {
    const q = new URLSearchParams({ skip: logState.skip, limit: LOG_PAGE });
    const model = $('klog-model').value.trim();
    const status = $('klog-status').value.trim();
    if (model) q.set('model', model);
    if (status) q.set('status', status);
    if ($('klog-errors').checked) q.set('is_error', 'true');
    if ($('klog-from').value) q.set('start_date', $('klog-from').value);
    if ($('klog-to').value) q.set('end_date', $('klog-to').value);
    return q;
  }

  async function loadKeyLogs() {
    if (!logKey) return;
    const js = await admin('GET', '/admin/api-keys/' + encodeURIComponent(logKey.id) +
      '/usage/logs?' + logQuery());
    const body = $('klog-table').tBodies[0];
    clear(body);
    for (const r of js.items) {
      const st = el('td', { className: 'num' },
        el('span', { className: 'badge ' + (r.is_error ? 'off' : 'on') }, r.response_status));
      if (r.error_message) st.title = r.error_message;
      body.appendChild(el('tr', { dataset: { logId: r.id } },
        el('td', { className: 'nowrap' }, fmtTime(r.created_at, true)),
        el('td', {}, r.model || '—'),
        st,
        el('td', { className: 'num' }, fmtInt(r.prompt_tokens)),
        el('td', { className: 'num' }, fmtInt(r.completion_tokens)),
        el('td', { className: 'num' }, fmtInt(r.cache_creation_tokens)),
        el('td', { className: 'num' }, fmtInt(r.cache_read_tokens)),
        el('td', { className: 'num' }, fmtInt(r.total_tokens) + (r.estimated ? '*' : '')),
        el('td', { className: 'num' }, fmtCost(r.total_cost)),
        el('td', { className: 'num' }, fmtInt(r.response_time_ms) + ' ms'),
        el('td', {}, r.stream ? 'stream' : 'json')));
    }
    show($('klog-empty'), js.items.length === 0);
    const from = js.items.length ? logState.skip + 1 : 0;
    $('klog-range').textContent = from + '–' + (logState.skip + js.items.length) + ' of ' +
      fmtInt(js.total);
    $('klog-prev').disabled = logState.skip === 0;
    $('klog-next').disabled = logState.skip + LOG_PAGE >= js.total;
  }

  C.onKeyOpen(async (k) => {
    if (!logKey || logKey.id !== k.id) { // another key: its log starts unfiltered
      for (const id of ['klog-model', 'klog-status', 'klog-from', 'klog-to']) $(id).value = '';
      $('klog-errors').checked = false;
      logState.skip = 0;
    }
    logKey = k;
    await loadKeyLogs();
  });

  C.registerTab('dashboard', loadDashboard, { default: true });
  document.addEventListener('DOMContentLoaded', () => {
    $('dash-refresh').addEventListener('click', () => attempt(loadDashboard));
    $('klog-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      logState.skip = 0;
      attempt(loadKeyLogs);
    });
    $('klog-form').addEventListener('reset', () => {
      logState.skip = 0;
      setTimeout(() => attempt(loadKeyLogs), 0); // after the fields are cleared
    });
    $('klog-prev').addEventListener('click', () => {
      logState.skip = Math.max(0, logState.skip - LOG_PAGE);
      attempt(loadKeyLogs);
    });
    $('klog-next').addEventListener('click', () => {
      logState.skip += LOG_PAGE;
      attempt(loadKeyLogs);
    });
  });
})();
