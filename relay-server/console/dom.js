// The console's one DOM builder, for HTML (app.js and the tabs) and SVG (charts.js) alike.
// Children that are strings become text nodes: API strings never reach the page as markup.
'use strict';

(function () {
  /** An element of namespace ns (null: HTML); props className, dataset, on<event>, attributes. */
  function build(ns, tag, props, children) {
    const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === 'className') e.setAttribute('class', v);
      else if (k === 'dataset') Object.assign(e.dataset, v);
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, String(v));
    }
    for (const c of children || []) {
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  window.RelayDom = Object.freeze({ build, clear });
})();
