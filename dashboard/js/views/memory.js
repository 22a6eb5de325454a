// Memory viewer: the long-term memories (`memory_list`, newest first), a search
// (`memory_search`, best first), and the memory activity of recent turns.

import { el, clock, errorText } from '../ui.js';

export class MemoryView {
  constructor(app) {
    this.app = app;
    this.id = 'memory';
    this.title = 'Memory';
    this.query = el('input#mem-query', { placeholder: 'search memories', type: 'search' });
    this.form = el('form.toolbar', {
      onsubmit: (e) => {
        e.preventDefault();
        this.load();
      },
    }, this.query, el('button', { type: 'submit' }, 'Search'),
    el('button', { type: 'button', onclick: () => { this.query.value = ''; this.load(); } }, 'List all'),
    el('span.muted#mem-status'));
    this.table = el('table.mem-table#mem-table');
    this.activity = el('ul.activity#mem-activity');
    this.root = el('section.view.memory-view', { dataset: { view: this.id } },
      this.form, this.table, el('h3', 'Recent activity'), this.activity);
    this.dirty = false;
  }

  onShow() {
    if (!this.loaded) this.load();
  }

  async load() {
    const status = this.root.querySelector('#mem-status');
    const q = this.query.value.trim();
    status.textContent = 'loading…';
    try {
      const res = q
        ? await this.app.conn.request('memory_search', { query: q, limit: 100 })
        : await this.app.conn.request('memory_list', { limit: 100 });
      this.loaded = true;
      const items = res.items || [];
      status.textContent = `${items.length} ${q ? `match${items.length === 1 ? '' : 'es'} for “${q}”` : 'memories'}`;
      this.table.replaceChildren(
        el('thead', el('tr', ['content', 'tags', q ? 'score' : 'stored', 'id'].map((h) => el('th', h)))),
        el('tbody', items.map((m) => el('tr', { dataset: { id: m.memory_id } },
          el('td', m.content), el('td', (m.tags || []).join(', ')),
          el('td', q ? (m.score != null ? m.score.toFixed(3) : '–') : (m.created_at ? new Date(m.created_at * 1000).toLocaleString() : '–')),
          el('td.muted', m.memory_id)))));
    } catch (e) {
      status.textContent = errorText(e);
      status.classList.add('error');
    }
  }

  onEvent(ev) {
    const d = ev.data || {};
    let text;
    if (ev.type === 'memory_store') text = `stored ${d.memory_id}: ${d.content}`;
    else if (ev.type === 'memory_retrieve') text = `retrieved ${d.results.length} for “${d.query}” in ${d.duration_ms.toFixed(1)} ms`;
    else if (ev.type === 'memory_error') text = `error ${d.code}: ${d.message}`;
    else return;
    this.activity.prepend(el(`li.${ev.type}`, `${clock(ev.timestamp)} ${text}`));
    while (this.activity.children.length > 100) this.activity.lastChild.remove();
    if (ev.type === 'memory_store' && this.loaded && !this.query.value.trim()) this.load();
  }

  render() {}
}
