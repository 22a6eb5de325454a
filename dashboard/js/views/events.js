// Event debugger: every message received, filterable by type, pausable, each one copyable
// as JSON. Virtualised: whatever the number of events kept, only the rows in view exist in
// the DOM, and they are redrawn at most once per animation frame.

import { el, clock, copyText } from '../ui.js';

const ROW = 20; // px, fixed row height (CSS .ev-row)
const CAP = 50000; // events kept
const OVERSCAN = 8;

export class EventsView {
  constructor(app) {
    this.app = app;
    this.id = 'events';
    this.title = 'Event debugger';
    this.entries = []; // {n, seq, type, ts, session, text, ev}
    this.offset = 0; // n of entries[0]
    this.nextN = 0;
    this.filtered = []; // n's matching the filter, in order
    this.patterns = null; // null = all
    this.paused = false;
    this.pendingWhilePaused = 0;
    this.follow = true;
    this.selected = null;
    this.types = new Map(); // type -> count
    this.dirty = true;
    this.typesDirty = false;

    this.filterInput = el('input#ev-filter', {
      placeholder: 'filter: types or prefixes, e.g. llm_*, stt_result, -diagnostic_tick',
      list: 'ev-types', oninput: () => this.setFilter(this.filterInput.value),
    });
    this.typeList = el('datalist#ev-types');
    this.pauseBtn = el('button#ev-pause', { onclick: () => this.togglePause() }, 'Pause');
    this.clearBtn = el('button', { onclick: () => this.clear() }, 'Clear');
    this.status = el('span.ev-status#ev-status');
    this.spacer = el('div.ev-spacer');
    this.rowsBox = el('div.ev-rows');
    this.scroller = el('div.ev-scroll#ev-scroll', { onscroll: () => this.onScroll() }, this.spacer, this.rowsBox);
    this.rowsBox.addEventListener('click', (e) => {
      const row = e.target.closest('.ev-row');
      if (row && row.dataset.n) this.select(Number(row.dataset.n));
    });
    this.detail = el('pre.ev-json#ev-json', 'Click an event to see its JSON.');
    this.copyBtn = el('button#ev-copy', { onclick: () => this.copy(), disabled: true }, 'Copy JSON');
    this.root = el('section.view.events-view', { dataset: { view: this.id } },
      el('div.toolbar', this.filterInput, this.typeList, this.pauseBtn, this.clearBtn, this.status),
      el('div.ev-split',
        el('div.ev-list', el('div.ev-head', el('span.c-seq', 'seq'), el('span.c-time', 'time'),
          el('span.c-type', 'type'), el('span.c-sess', 'session'), el('span.c-data', 'data')), this.scroller),
        el('div.ev-detail', el('div.toolbar', this.copyBtn, el('span.muted#ev-copied')), this.detail)));
    this.pool = [];
  }

  onEvent(ev, raw) {
    const n = this.nextN++;
    const type = ev.type;
    const entry = { n, seq: ev.seq, type, ts: ev.timestamp, session: ev.session_id, text: raw, ev: raw ? null : ev };
    this.entries.push(entry);
    this.types.set(type, (this.types.get(type) || 0) + 1);
    if (this.types.get(type) === 1) this.typesDirty = true;
    if (this.entries.length > CAP + CAP / 5) this.trim();
    if (this.paused) {
      this.pendingWhilePaused += 1;
    } else if (this.matches(type)) {
      this.filtered.push(n);
    }
    this.dirty = true;
  }

  trim() {
    const drop = this.entries.length - CAP;
    this.entries.splice(0, drop);
    this.offset = this.entries[0].n;
    let i = 0;
    while (i < this.filtered.length && this.filtered[i] < this.offset) i++;
    if (i) this.filtered.splice(0, i);
  }

  matches(type) {
    if (!this.patterns) return true;
    const { inc, exc } = this.patterns;
    const hit = (p) => (p.endsWith('*') ? type.startsWith(p.slice(0, -1)) : type === p);
    if (exc.some(hit)) return false;
    return inc.length === 0 || inc.some(hit);
  }

  setFilter(text) {
    const parts = text.split(/[\s,]+/).filter(Boolean);
    const inc = parts.filter((p) => !p.startsWith('-'));
    const exc = parts.filter((p) => p.startsWith('-')).map((p) => p.slice(1)).filter(Boolean);
    this.patterns = parts.length ? { inc, exc } : null;
    this.rebuild();
  }

  rebuild() {
    const limit = this.paused ? this.frozenAt : this.nextN;
    this.filtered = [];
    for (const e of this.entries) if (e.n < limit && this.matches(e.type)) this.filtered.push(e.n);
    this.dirty = true;
  }

  togglePause() {
    this.paused = !this.paused;
    if (this.paused) {
      this.frozenAt = this.nextN;
      this.pendingWhilePaused = 0;
    } else {
      this.pendingWhilePaused = 0;
      this.rebuild();
    }
    this.pauseBtn.textContent = this.paused ? 'Resume' : 'Pause';
    this.pauseBtn.classList.toggle('active', this.paused);
    this.dirty = true;
  }

  clear() {
    this.entries = [];
    this.filtered = [];
    this.offset = this.nextN;
    this.types.clear();
    this.typesDirty = true;
    this.selected = null;
    this.dirty = true;
  }

  entry(n) {
    return this.entries[n - this.offset];
  }

  json(e) {
    return e.text !== null ? e.text : JSON.stringify(e.ev);
  }

  select(n) {
    const e = this.entry(n);
    if (!e) return;
    this.selected = n;
    let pretty;
    try {
      pretty = JSON.stringify(JSON.parse(this.json(e)), null, 2);
    } catch {
      pretty = this.json(e);
    }
    this.detail.textContent = pretty;
    this.copyBtn.disabled = false;
    this.dirty = true;
  }

  async copy() {
    const e = this.selected !== null && this.entry(this.selected);
    if (!e) return;
    const ok = await copyText(this.json(e));
    const note = this.root.querySelector('#ev-copied');
    note.textContent = ok ? 'copied' : 'copy failed: select the text and copy it by hand';
    setTimeout(() => { note.textContent = ''; }, 2000);
  }

  onScroll() {
    const s = this.scroller;
    this.follow = s.scrollTop + s.clientHeight >= s.scrollHeight - ROW * 2;
    this.dirty = true;
  }

  render() {
    if (this.typesDirty) {
      this.typesDirty = false;
      this.typeList.replaceChildren(...[...this.types.keys()].sort().map((t) => el('option', { value: t })));
    }
    const total = this.filtered.length;
    this.status.textContent = `${total.toLocaleString()} shown · ${this.entries.length.toLocaleString()} kept`
      + (this.paused ? ` · paused (${this.pendingWhilePaused.toLocaleString()} new)` : '');
    this.spacer.style.height = `${total * ROW}px`;
    const s = this.scroller;
    if (this.follow && !this.paused) s.scrollTop = total * ROW;
    const height = s.clientHeight || 400;
    const first = Math.max(0, Math.floor(s.scrollTop / ROW) - OVERSCAN);
    const count = Math.min(total - first, Math.ceil(height / ROW) + OVERSCAN * 2);
    while (this.pool.length < count) {
      const row = el('div.ev-row', el('span.c-seq'), el('span.c-time'), el('span.c-type'), el('span.c-sess'), el('span.c-data'));
      this.pool.push(row);
      this.rowsBox.append(row);
    }
    this.rowsBox.style.transform = `translateY(${first * ROW}px)`;
    for (let i = 0; i < this.pool.length; i++) {
      const row = this.pool[i];
      if (i >= count) {
        row.hidden = true;
        continue;
      }
      const n = this.filtered[first + i];
      const e = this.entry(n);
      row.hidden = false;
      if (row.dataset.n === String(n)) {
        row.classList.toggle('selected', n === this.selected);
        continue;
      }
      row.dataset.n = n;
      row.dataset.type = e.type;
      row.classList.toggle('selected', n === this.selected);
      row.classList.toggle('gap', e.type === '_gap');
      const c = row.children;
      c[0].textContent = e.seq ?? '';
      c[1].textContent = clock(e.ts);
      c[2].textContent = e.type === '_gap' ? '— gap —' : e.type;
      c[3].textContent = e.session || '';
      c[4].textContent = summary(e);
    }
  }
}

function summary(e) {
  if (e.text === null) return JSON.stringify(e.ev.data).slice(0, 240);
  const i = e.text.indexOf('"data":');
  return (i >= 0 ? e.text.slice(i + 7, i + 247) : e.text.slice(0, 240));
}
