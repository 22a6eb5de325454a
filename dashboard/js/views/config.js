// Read-only configuration: the server's effective settings (`get_config`), secrets
// redacted by the server. There is deliberately no way to change them from here.

import { el } from '../ui.js';

export class ConfigView {
  constructor(app) {
    this.app = app;
    this.id = 'config';
    this.title = 'Config';
    this.body = el('div.config#config-body', el('p.muted', 'Loading…'));
    this.root = el('section.view.config-view', { dataset: { view: this.id } },
      el('div.toolbar', el('button', { onclick: () => this.load() }, 'Reload'),
        el('span.muted', 'Read-only: edit the config file (or CODA__SECTION__KEY) and restart the server to change it.')),
      this.body);
    this.dirty = false;
  }

  onShow() {
    this.load();
  }

  async load() {
    try {
      const res = await this.app.conn.request('get_config');
      this.show(res);
    } catch (e) {
      this.app.report(e);
    }
  }

  show(res) {
    const sections = [];
    if (res.profile) sections.push(el('p', `profile: ${res.profile}`));
    for (const [name, sec] of Object.entries(res.config || {})) {
      const rows = typeof sec === 'object' && sec !== null && !Array.isArray(sec)
        ? Object.entries(sec) : [['value', sec]];
      sections.push(el('details.cfg-section', { open: true, dataset: { section: name } }, el('summary', `[${name}]`),
        el('table', el('tbody', rows.map(([k, v]) => el('tr', el('th', k),
          el(`td${v === '<redacted>' ? '.redacted' : ''}`, typeof v === 'string' ? JSON.stringify(v) : JSON.stringify(v))))))));
    }
    this.body.replaceChildren(...sections);
  }

  onEvent(ev) {
    if (ev.type === 'config') this.show(ev.data);
  }

  render() {}
}
