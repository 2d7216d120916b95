// The console's charts: plain SVG built with DOM calls (dom.js), no library and nothing from
// elsewhere. Every string reaches the SVG as text, never as markup.
'use strict';

(function () {
  const NS = 'http://www.w3.org/2000/svg';
  const intFmt = new Intl.NumberFormat('en-US');

  const svg = (tag, attrs, ...children) => window.RelayDom.build(NS, tag, attrs, children);
  const clear = window.RelayDom.clear;

  /** 1234567 → "1.2M": axis labels stay short. */
  function short(n) {
    const a = Math.abs(n);
    if (a >= 1e9) return (n / 1e9).toFixed(a >= 1e10 ? 0 : 1) + 'B';
    if (a >= 1e6) return (n / 1e6).toFixed(a >= 1e7 ? 0 : 1) + 'M';
    if (a >= 1e3) return (n / 1e3).toFixed(a >= 1e4 || n % 1000 === 0 ? 0 : 1) + 'k';
    return intFmt.format(Math.round(n * 100) / 100);
  }

  /** A round axis maximum at or above v: TICKS steps of 1, 2, 2.5 or 5 times a power of ten. */
  const TICKS = 5;
  function niceMax(v) {
    if (v <= 0) return TICKS;
    const raw = v / TICKS;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return Math.max(TICKS, m * p * TICKS);
    return 10 * p * TICKS;
  }

  function fmtCost(n) {
    if (n === null || n === undefined) return '—';
    if (n === 0) return '$0';
    return '$' + (Math.abs(n) < 0.01 ? n.toFixed(6) : n.toFixed(2));
  }

  // The token kinds of a /usage/daily entry, bottom to top.
  const KINDS = [
    { field: 'prompt_tokens', label: 'Input', cls: 'k-input' },
    { field: 'completion_tokens', label: 'Output', cls: 'k-output' },
    { field: 'cache_creation_tokens', label: 'Cache write', cls: 'k-cache-write' },
    { field: 'cache_read_tokens', label: 'Cache read', cls: 'k-cache-read' },
  ];

  function legend(items) {
    const ul = document.createElement('ul');
    ul.className = 'legend';
    for (const it of items) {
      const li = document.createElement('li');
      const sw = document.createElement('span');
      sw.className = 'swatch ' + it.cls;
      li.append(sw, document.createTextNode(it.label));
      ul.appendChild(li);
    }
    return ul;
  }

  /**
   * Tokens per day stacked by kind, with requests as a line on the right-hand scale, from a
   * /usage/daily answer (newest first; drawn oldest → newest). Each day is a <g class="col">
   * carrying data-date, data-tokens and data-requests, with the day's figures as its tooltip.
   */
  function daily(node, days, opts) {
    const o = Object.assign({ width: 720, height: 220, requests: true }, opts);
    clear(node);
    node.classList.add('chart-svg');
    const series = days.slice().reverse();
    const W = o.width, H = o.height, L = 48, R = o.requests ? 40 : 10, T = 10, B = 24;
    const pw = W - L - R, ph = H - T - B;
    const maxTok = niceMax(Math.max(0, ...series.map((d) => d.tokens)));
    const maxReq = niceMax(Math.max(0, ...series.map((d) => d.requests)));
    const root = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, role: 'img',
      className: 'daily', 'aria-label': o.label || 'Tokens and requests per day' });
    // grid and scales
    for (let i = 0; i <= TICKS; i++) {
      const y = T + ph - (ph * i) / TICKS;
      root.appendChild(svg('line', { x1: L, x2: L + pw, y1: y, y2: y, className: 'grid' }));
      root.appendChild(svg('text', { x: L - 6, y: y + 4, className: 'scale', 'text-anchor': 'end' },
        short((maxTok * i) / TICKS)));
      if (o.requests) {
        root.appendChild(svg('text', { x: L + pw + 6, y: y + 4, className: 'scale req' },
          short((maxReq * i) / TICKS)));
      }
    }
    const n = Math.max(1, series.length);
    const slot = pw / n, bw = Math.max(1, slot * 0.72);
    const points = [];
    series.forEach((d, i) => {
      const x = L + i * slot + (slot - bw) / 2;
      const g = svg('g', { className: 'col', dataset: { date: d.date, tokens: d.tokens,
        requests: d.requests } });
      g.appendChild(svg('title', {}, d.date + ': ' + intFmt.format(d.tokens) + ' tokens (' +
        KINDS.map((k) => k.label.toLowerCase() + ' ' + intFmt.format(d[k.field] || 0)).join(', ') +
        '), ' + intFmt.format(d.requests) + ' requests, ' + fmtCost(d.cost) +
        (d.errors ? ', ' + intFmt.format(d.errors) + ' errors' : '')));
      g.appendChild(svg('rect', { x: L + i * slot, y: T, width: slot, height: ph,
        className: 'hover' }));
      let y = T + ph;
      for (const k of KINDS) {
        const v = d[k.field] || 0;
        if (!v) continue;
        const h = Math.max(1, (v / maxTok) * ph);
        y -= h;
        g.appendChild(svg('rect', { x: x, y: y, width: bw, height: h, className: 'seg ' + k.cls,
          dataset: { kind: k.field, value: v } }));
      }
      if (d.errors) {
        g.appendChild(svg('rect', { x: x, y: T + ph + 2, width: bw, height: 3,
          className: 'err-mark' }));
      }
      root.appendChild(g);
      points.push([L + i * slot + slot / 2, T + ph - (d.requests / maxReq) * ph]);
    });
    if (o.requests && points.length) {
      root.appendChild(svg('polyline', { className: 'req-line',
        points: points.map((p) => p[0].toFixed(1) + ',' + p[1].toFixed(1)).join(' ') }));
      for (const [x, y] of points) {
        root.appendChild(svg('circle', { cx: x.toFixed(1), cy: y.toFixed(1), r: 2,
          className: 'req-dot' }));
      }
    }
    root.appendChild(svg('line', { x1: L, x2: L + pw, y1: T + ph, y2: T + ph, className: 'axis' }));
    if (series.length) {
      root.appendChild(svg('text', { x: L, y: H - 6, className: 'scale' }, series[0].date));
      root.appendChild(svg('text', { x: L + pw, y: H - 6, className: 'scale',
        'text-anchor': 'end' }, series[series.length - 1].date));
    }
    node.appendChild(root);
    const items = KINDS.slice();
    if (o.requests) items.push({ label: 'Requests (right scale)', cls: 'k-requests' });
    node.appendChild(legend(items));
    if (!series.some((d) => d.tokens || d.requests)) {
      const p = document.createElement('p');
      p.className = 'empty';
      p.textContent = 'No traffic in this period.';
      node.appendChild(p);
    }
    return root;
  }

  /**
   * Horizontal bars: items [{label, value, text, data}] largest first, one row each
   * (<g class="hbar" data-label=… data-value=…>); text is what the row shows at its end.
   */
  function hbars(node, items, opts) {
    const o = Object.assign({ width: 520, row: 26, empty: 'Nothing yet.' }, opts);
    clear(node);
    node.classList.add('chart-svg');
    if (!items.length) {
      const p = document.createElement('p');
      p.className = 'empty';
      p.textContent = o.empty;
      node.appendChild(p);
      return null;
    }
    const W = o.width, LW = Math.round(W * 0.34), VW = 150, BW = W - LW - VW - 12;
    const H = items.length * o.row + 4;
    const max = Math.max(...items.map((i) => i.value), 0) || 1;
    const root = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, role: 'img', className: 'hbars',
      'aria-label': o.label || '' });
    items.forEach((it, i) => {
      const y = 2 + i * o.row;
      const g = svg('g', { className: 'hbar', dataset: Object.assign({ label: it.label,
        value: it.value }, it.data || {}) });
      const label = it.label.length > 34 ? it.label.slice(0, 33) + '…' : it.label;
      g.appendChild(svg('title', {}, it.label + ': ' + it.text));
      g.appendChild(svg('text', { x: LW - 8, y: y + o.row / 2 + 4, 'text-anchor': 'end',
        className: 'hlabel' }, label));
      g.appendChild(svg('rect', { x: LW, y: y + 5, width: BW, height: o.row - 10,
        className: 'track' }));
      g.appendChild(svg('rect', { x: LW, y: y + 5, height: o.row - 10,
        width: Math.max(it.value > 0 ? 2 : 0, (it.value / max) * BW), className: 'fillbar' }));
      g.appendChild(svg('text', { x: W - 4, y: y + o.row / 2 + 4, 'text-anchor': 'end',
        className: 'hvalue' }, it.text));
      if (o.onclick) {
        g.classList.add('clickable');
        g.addEventListener('click', () => o.onclick(it));
      }
      root.appendChild(g);
    });
    node.appendChild(root);
    return root;
  }

  window.RelayCharts = Object.freeze({ daily, hbars, short, niceMax });
})();
