// Component status: the server (version, uptime, clients, epoch) and each supervised
// component with its state and restart count, from `get_system_info` and live
// `component_status` events. Colours follow the state.

import { el, clock } from '../ui.js';

export class ComponentsView {
  constructor(app) {
    this.app = app;
    this.id = 'components';
    this.title = 'Components';
    this.components = new Map(); // name -> {state, restarts, reason, uptime_s, at}
    this.info = null;
    this.server = el('dl.server-info#server-info');
    this.table = el('table.comp-table#comp-table');
    this.history = el('ul.activity#comp-history');
    this.root = el('section.view.components-view', { dataset: { view: this.id } },
      el('div.toolbar', el('button', { onclick: () => this.refresh() }, 'Refresh')),
      this.server, this.table, el('h3', 'State changes'), this.history);
    this.dirty = true;
  }

  onShow() {
    this.refresh();
  }

  async refresh() {
    try {
      this.setInfo(await this.app.conn.request('get_system_info'));
    } catch (e) {
      this.app.report(e);
    }
  }

  setInfo(info) {
    this.info = info;
    this.infoAt = performance.now();
    for (const c of info.components || []) this.components.set(c.name, { ...c });
    this.dirty = true;
  }

  onEvent(ev) {
    const d = ev.data || {};
    if (ev.type === 'system_info') this.setInfo(d);
    else if (ev.type === 'component_status') {
      const prev = this.components.get(d.component) || {};
      this.components.set(d.component, { ...prev, name: d.component, state: d.state, restarts: d.restarts, reason: d.reason, at: ev.timestamp });
      this.history.prepend(el(`li.state-${d.state}`, `${clock(ev.timestamp)} ${d.component} → ${d.state} (restarts ${d.restarts})${d.reason ? `: ${d.reason}` : ''}`));
      while (this.history.children.length > 100) this.history.lastChild.remove();
      this.dirty = true;
    }
  }

  /** The worst state among the components (for the header colour). */
  worst() {
    const rank = { running: 0, starting: 1, restarting: 2, stopped: 2, degraded: 3 };
    let w = 'running';
    for (const c of this.components.values()) if ((rank[c.state] ?? 0) > rank[w]) w = c.state;
    return w;
  }

  render() {
    const i = this.info;
    if (i) {
      const up = i.uptime_s + (performance.now() - this.infoAt) / 1000;
      const rows = [['server', i.server_version], ['protocol', i.protocol_version], ['uptime', `${up.toFixed(0)} s`],
        ['pid', String(i.pid)], ['listen', i.listen || ''], ['clients', String(i.clients)], ['auth', i.auth_required ? 'required' : 'off'],
        ['epoch', i.epoch], ['last seq', String(i.last_seq)]];
      this.server.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', k), el('dd', v)]));
    }
    const comps = [...this.components.values()].sort((a, b) => a.name.localeCompare(b.name));
    this.table.replaceChildren(
      el('thead', el('tr', ['component', 'state', 'restarts', 'uptime', 'reason'].map((h) => el('th', h)))),
      el('tbody', comps.map((c) => el(`tr.state-${c.state}`, { dataset: { component: c.name } },
        el('td', c.name), el('td', el('span.badge', { dataset: { state: c.state } }, c.state)),
        el('td.restarts', String(c.restarts ?? 0)), el('td', c.uptime_s != null ? `${Number(c.uptime_s).toFixed(0)} s` : '–'),
        el('td', c.reason || '')))));
  }
}
