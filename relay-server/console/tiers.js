// The console's rate-limit tiers tab: the table, and creating and editing a tier
// (PUT /admin/rate-limit-tiers/{name}, which creates or replaces it) or deleting one.
'use strict';

(function () {
  const C = window.RelayConsole;
  const { $, el, clear, show, fmtInt, fmtCost, showError, admin, attempt, notice } = C;

  const BUDGETS = [['tier-cost-daily', 'daily_cost_limit', 'daily'],
    ['tier-cost-weekly', 'weekly_cost_limit', 'weekly'],
    ['tier-cost-monthly', 'monthly_cost_limit', 'monthly'],
    ['tier-cost-total', 'cost_limit', 'lifetime']];
  let editing = null; // the tier being edited, or null when creating

  function budgetText(t) {
    const parts = BUDGETS.filter(([, f]) => t[f] !== null && t[f] !== undefined)
      .map(([, f, label]) => label + ' ' + fmtCost(t[f]));
    if (t.model_cost_limits && t.model_cost_limits.length) {
      parts.push(t.model_cost_limits.length + ' per model');
    }
    return parts.length ? parts.join(', ') : '—';
  }

  function tierRow(t) {
    const unlimited = t.requests < 0;
    return el('tr', { dataset: { tier: t.name } },
      el('td', { className: 'name' }, t.name),
      el('td', { className: 'num' }, unlimited ? 'unlimited' : fmtInt(t.requests)),
      el('td', { className: 'num' }, unlimited ? '—' : fmtInt(t.period) + ' s'),
      el('td', { className: 'num' }, t.tokens_per_minute ? fmtInt(t.tokens_per_minute) : '—'),
      el('td', { className: 'num' }, t.concurrent ? fmtInt(t.concurrent) : '—'),
      el('td', { className: 'budgets' }, budgetText(t)),
      el('td', { className: 'actions' },
        el('button', { type: 'button', className: 'small', dataset: { action: 'edit-tier' },
          onclick: () => openForm(t) }, 'Edit'),
        el('button', { type: 'button', className: 'small danger',
          dataset: { action: 'delete-tier' }, onclick: () => attempt(() => deleteTier(t)) },
        'Delete')));
  }

  async function loadTiers() {
    const tiers = await admin('GET', '/admin/rate-limit-tiers');
    const body = $('tiers-table').tBodies[0];
    clear(body);
    for (const t of tiers) body.appendChild(tierRow(t));
  }

  function openForm(t) {
    editing = t || null;
    const f = $('tier-form');
    f.reset();
    showError($('tier-form-error'), '');
    $('tier-form-title').textContent = t ? 'Edit tier “' + t.name + '”' : 'New tier';
    $('tier-form-submit').textContent = t ? 'Save' : 'Create tier';
    $('tier-name').readOnly = !!t;
    if (t) {
      $('tier-name').value = t.name;
      $('tier-requests').value = t.requests;
      $('tier-period').value = t.period;
      $('tier-tpm').value = t.tokens_per_minute || '';
      $('tier-concurrent').value = t.concurrent || '';
      for (const [id, field] of BUDGETS) $(id).value = t[field] === null ? '' : t[field];
      $('tier-cost-models').value = t.model_cost_limits ? JSON.stringify(t.model_cost_limits) : '';
    }
    show(f, true);
    (t ? $('tier-requests') : $('tier-name')).focus();
  }

  /** The PUT body: every field, so the tier ends up exactly as the form shows it. */
  function formBody() {
    const num = (id, dflt) => {
      const v = $(id).value.trim();
      return v === '' ? dflt : Number(v);
    };
    const body = {
      requests: num('tier-requests', undefined),
      period: num('tier-period', 60),
      tokens_per_minute: num('tier-tpm', 0),
      concurrent: num('tier-concurrent', 0),
    };
    for (const [id, field] of BUDGETS) body[field] = num(id, null);
    const models = $('tier-cost-models').value.trim();
    try {
      body.model_cost_limits = models === '' ? null : JSON.parse(models);
    } catch (e) {
      body.model_cost_limits = models; // refused by the server with the field's name
    }
    return body;
  }

  async function submitForm(ev) {
    ev.preventDefault();
    const name = $('tier-name').value.trim();
    const btn = $('tier-form-submit');
    btn.disabled = true;
    try {
      await admin('PUT', '/admin/rate-limit-tiers/' + encodeURIComponent(name), formBody());
      notice('Tier “' + name + '” ' + (editing ? 'saved.' : 'created.'), 'ok');
      show($('tier-form'), false);
      editing = null;
      await loadTiers();
    } catch (e) {
      if (e.status !== 401) showError($('tier-form-error'), e.message);
    } finally {
      btn.disabled = false;
    }
  }

  async function deleteTier(t) {
    const ok = await C.confirmDialog('Delete tier “' + t.name + '”? The relay refuses while a ' +
      'key uses it or it is the default tier.', 'Delete');
    if (!ok) return;
    await admin('DELETE', '/admin/rate-limit-tiers/' + encodeURIComponent(t.name));
    notice('Tier “' + t.name + '” deleted.', 'ok');
    await loadTiers();
  }

  C.registerTab('tiers', loadTiers);
  document.addEventListener('DOMContentLoaded', () => {
    $('new-tier-button').addEventListener('click', () => openForm(null));
    $('tier-form').addEventListener('submit', submitForm);
    $('tier-form-cancel').addEventListener('click', () => show($('tier-form'), false));
  });
})();
