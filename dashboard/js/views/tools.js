// Tool calls: each call with its arguments, then its result (and time) or its error.

import { el, ms, clock } from '../ui.js';

export class ToolsView {
  constructor(app) {
    this.app = app;
    this.id = 'tools';
    this.title = 'Tool calls';
    this.calls = new Map();
    this.list = el('div.tool-list#tool-list');
    this.empty = el('p.muted', 'No tool call yet. Try “what time is it?” or “what is 12*7?”.');
    this.root = el('section.view.tools-view', { dataset: { view: this.id } }, this.empty, this.list);
    this.dirty = false;
  }

  onEvent(ev) {
    const d = ev.data || {};
    if (ev.type === '_gap' && d.epoch !== d.previous_epoch) this.calls.clear(); // ids restart
    if (!['tool_call', 'tool_result', 'tool_error'].includes(ev.type)) return;
    let c = this.calls.get(d.call_id);
    if (!c) {
      c = {
        node: el('article.tool-card', { dataset: { call: d.call_id } },
          el('header', el('b', d.tool), el('span.badge.t-status', 'running'), el('span.muted', `${clock(ev.timestamp)} · ${d.call_id}${d.turn_id ? ` · ${d.turn_id}` : ''}`)),
          el('pre.t-args'), el('pre.t-out')),
      };
      this.calls.set(d.call_id, c);
      this.list.prepend(c.node);
      this.empty.hidden = true;
      while (this.list.children.length > 200) {
        const old = this.list.lastChild;
        if (this.calls.get(old.dataset.call)?.node === old) this.calls.delete(old.dataset.call);
        old.remove();
      }
    }
    const status = c.node.querySelector('.t-status');
    if (ev.type === 'tool_call') {
      c.node.querySelector('.t-args').textContent = `arguments: ${JSON.stringify(d.arguments, null, 1)}`;
    } else if (ev.type === 'tool_result') {
      status.textContent = `ok · ${ms(d.duration_ms)}`;
      status.dataset.state = 'ok';
      c.node.querySelector('.t-out').textContent = `result: ${JSON.stringify(d.result, null, 1)}`;
    } else {
      status.textContent = d.code;
      status.dataset.state = 'error';
      c.node.querySelector('.t-out').textContent = `${d.level}: ${d.message}`;
    }
  }

  render() {}
}
