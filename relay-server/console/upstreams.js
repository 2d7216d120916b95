// The console's Upstreams tab: the pool's state and the database upstreams' definitions, through
// /admin/upstreams only. Same rules as app.js: API strings reach the DOM as text, never as HTML;
// an upstream's key is sent once and never shown (the API gives only its last four characters).
'use strict';

(function () {
  const C = window.RelayConsole;
  const $ = (id) => document.getElementById(id);
  const { el, clear, show, admin, attempt, notice, fmtInt, fmtTime, confirmDialog } = C;
  let editing = null; // the upstream being edited, null for a new one

  function stateBadge(u) {
    const cls = u.state === 'ok' ? (u.healthy ? 'on' : 'cool') : u.state === 'cooling' ? 'cool'
      : 'off';
    const b = el('span', { className: 'badge ' + cls }, u.state === 'ok' && !u.healthy
      ? 'errors' : u.state);
    if (u.cooldown_until) b.title = 'cooling down until ' + fmtTime(u.cooldown_until, true);
    return b;
  }

  function button(label, action, fn, danger) {
    return el('button', { type: 'button', className: 'small' + (danger ? ' danger' : ''),
      dataset: { action }, onclick: () => attempt(fn) }, label);
  }

  function row(u) {
    const db = u.source === 'database';
    const path = '/admin/upstreams/' + encodeURIComponent(u.id);
    const actions = el('td', { className: 'actions' },
      button('Test', 'test', () => testUpstream(u, path)),
      u.state === 'disabled'
        ? button('Enable', 'enable', () => post(u, path + '/enable', 'enabled'))
        : button('Disable', 'disable', () => post(u, path + '/disable', 'disabled')),
      db ? button('Edit', 'edit', async () => openForm(u)) : null,
      db ? button('Delete', 'delete', () => removeUpstream(u, path), true) : null);
    const err = el('td', {}, u.last_error || '—');
    if (u.last_error_at) err.title = fmtTime(u.last_error_at, true);
    return el('tr', { dataset: { upstream: u.name } },
      el('td', { className: 'name' }, u.name, u.group ? el('div', { className: 'hint' },
        'group ' + u.group) : null),
      el('td', {}, u.source),
      el('td', { className: 'state' }, stateBadge(u)),
      el('td', { className: 'num' }, fmtInt(u.priority)),
      el('td', { className: 'num' }, fmtInt(u.weight)),
      el('td', {}, u.models.length ? u.models.join(', ') : 'all'),
      el('td', { className: 'num' }, fmtInt(u.in_flight)),
      el('td', { className: 'num' }, fmtInt(u.requests_5m) + ' / ' + fmtInt(u.errors_5m)),
      err,
      el('td', { className: 'nowrap' }, el('code', { className: 'key-last4' },
        u.key_last4 ? '…' + u.key_last4 : '—')),
      actions);
  }

  async function load() {
    const js = await admin('GET', '/admin/upstreams');
    const body = $('upstreams-table').tBodies[0];
    clear(body);
    for (const u of js.items) body.appendChild(row(u));
  }

  async function post(u, path, verb) {
    await admin('POST', path);
    notice('Upstream “' + u.name + '” ' + verb + '.', 'ok');
    await load();
  }

  async function testUpstream(u, path) {
    const js = await admin('POST', path + '/test');
    notice('Test of “' + u.name + '”: ' + (js.ok ? 'passed' : 'failed') + ' (' + js.message + ')',
      js.ok ? 'ok' : 'error');
    await load();
  }

  async function removeUpstream(u, path) {
    const ok = await confirmDialog('Delete upstream “' + u.name + '”? Requests stop going to it ' +
      'at once, on every instance.', 'Delete');
    if (!ok) return;
    await admin('DELETE', path);
    notice('Upstream “' + u.name + '” deleted.', 'ok');
    await load();
  }

  function openForm(u) {
    editing = u;
    $('upstream-form-title').textContent = u ? 'Edit upstream “' + u.name + '”' : 'New upstream';
    $('upstream-form-submit').textContent = u ? 'Save' : 'Create upstream';
    $('upstream-name').value = u ? u.name : '';
    $('upstream-url').value = u ? u.url : '';
    $('upstream-key').value = '';
    $('upstream-key').required = !u;
    $('upstream-key-hint').textContent = u ? 'now …' + u.key_last4 + '; empty keeps it'
      : 'shown never again, only its last four characters';
    $('upstream-weight').value = u ? u.weight : 1;
    $('upstream-priority').value = u ? u.priority : 0;
    $('upstream-models').value = u ? u.models.join(', ') : '';
    $('upstream-concurrency').value = u ? u.max_concurrency : 0;
    $('upstream-group').value = u && u.group ? u.group : '';
    C.show($('upstream-form-error'), false);
    show($('upstream-form'), true);
    $('upstream-name').focus();
  }

  function formBody() {
    const b = {
      name: $('upstream-name').value.trim(),
      url: $('upstream-url').value.trim(),
      weight: Number($('upstream-weight').value || 1),
      priority: Number($('upstream-priority').value || 0),
      models: $('upstream-models').value.split(',').map((s) => s.trim()).filter((s) => s),
      max_concurrency: Number($('upstream-concurrency').value || 0),
      group: $('upstream-group').value.trim() || null,
    };
    const key = $('upstream-key').value;
    if (key) b.api_key = key;
    return b;
  }

  async function submit(ev) {
    ev.preventDefault();
    const errBox = $('upstream-form-error');
    try {
      const body = formBody();
      if (editing) await admin('PATCH', '/admin/upstreams/' + encodeURIComponent(editing.id), body);
      else await admin('POST', '/admin/upstreams', body);
      $('upstream-key').value = ''; // the key leaves the page with the request
      show($('upstream-form'), false);
      notice('Upstream “' + body.name + '” ' + (editing ? 'saved.' : 'created.'), 'ok');
      await load();
    } catch (e) {
      if (e.status === 401) return;
      errBox.textContent = e.message;
      show(errBox, true);
    }
  }

  C.registerTab('upstreams', load);

  document.addEventListener('DOMContentLoaded', () => {
    $('upstreams-refresh').addEventListener('click', () => attempt(load));
    $('new-upstream-button').addEventListener('click', () => openForm(null));
    $('upstream-form').addEventListener('submit', submit);
    $('upstream-form-cancel').addEventListener('click', () => {
      $('upstream-key').value = '';
      show($('upstream-form'), false);
    });
  });
})();
