// Latency monitor: one chart per pipeline stage with every turn's value (from
// `latency_trace`), and the server's p50/p95/p99 over its window (from `component_timing`,
// asked for with `get_performance_metrics` and refreshed periodically) as reference lines.

import { el, ms, percentile } from '../ui.js';
import { LineChart } from '../chart.js';

const STAGES = ['total', 'stt', 'intent', 'llm_ttft', 'llm', 'tts_first_audio', 'tts', 'kernel'];

export class LatencyView {
  constructor(app) {
    this.app = app;
    this.id = 'latency';
    this.title = 'Latency';
    this.samples = new Map(); // stage -> [ms]
    this.charts = new Map(); // stage -> {chart, box}
    this.timing = null;
    this.turns = 0;
    this.table = el('table.lat-table#lat-table');
    this.grid = el('div.chart-grid#lat-charts');
    this.note = el('p.muted#lat-note', 'No turn measured yet.');
    this.counters = el('dl.counters#lat-counters');
    this.root = el('section.view.latency-view', { dataset: { view: this.id } },
      el('div.toolbar', el('button', { onclick: () => this.refresh() }, 'Refresh percentiles'), this.note),
      this.table, this.grid, el('h3', 'Counters'), this.counters);
    this.dirty = true;
  }

  chart(stage) {
    let c = this.charts.get(stage);
    if (!c) {
      const canvas = el('canvas.chart');
      const box = el('figure.chart-box', { dataset: { stage } }, el('figcaption', stage), canvas);
      c = { chart: new LineChart(canvas, { unit: ' ms', time: false, max: 500 }), box };
      this.charts.set(stage, c);
      const order = (s) => STAGES.indexOf(s) === -1 ? 99 : STAGES.indexOf(s);
      const after = [...this.grid.children].find((n) => order(n.dataset.stage) > order(stage));
      this.grid.insertBefore(box, after || null);
    }
    return c.chart;
  }

  async refresh() {
    try {
      const t = await this.app.conn.request('get_performance_metrics');
      this.setTiming(t);
    } catch (e) {
      this.app.report(e);
    }
  }

  setTiming(t) {
    this.timing = t;
    for (const s of t.stages || []) {
      this.chart(s.stage).setRefs([
        { label: 'p50', value: s.p50_ms, color: '#5cc689' },
        { label: 'p95', value: s.p95_ms, color: '#e25c6a' },
      ]);
    }
    this.dirty = true;
  }

  onShow() {
    this.refresh();
    for (const c of this.charts.values()) c.chart.dirty = true;
  }

  onEvent(ev) {
    if (ev.type === 'latency_trace') {
      this.turns += 1;
      for (const [k, v] of Object.entries(ev.data)) {
        if (!k.endsWith('_ms') || typeof v !== 'number') continue;
        const stage = k.slice(0, -3);
        const arr = this.samples.get(stage) || [];
        arr.push(v);
        if (arr.length > 500) arr.shift();
        this.samples.set(stage, arr);
        this.chart(stage).push(stage, this.turns, v);
      }
      this.dirty = true;
    } else if (ev.type === 'component_timing') {
      this.setTiming(ev.data);
    }
  }

  render() {
    const t = this.timing;
    this.note.textContent = t
      ? `server window ${Number(t.window_s).toFixed(0)} s · ${t.turns} turns · ${this.turns} traces received here`
      : (this.turns ? `${this.turns} traces received` : 'No turn measured yet.');
    const head = el('tr', ['stage', 'count', 'p50', 'p95', 'p99', 'max', 'p50 here', 'p95 here'].map((h) => el('th', h)));
    const rows = [];
    const stages = new Set([...(t ? t.stages.map((s) => s.stage) : []), ...this.samples.keys()]);
    for (const stage of [...stages].sort((a, b) => STAGES.indexOf(a) - STAGES.indexOf(b))) {
      const s = t && t.stages.find((x) => x.stage === stage);
      const here = this.samples.get(stage) || [];
      rows.push(el('tr', { dataset: { stage } }, el('td', stage), el('td', s ? String(s.count) : '–'),
        el('td', ms(s && s.p50_ms)), el('td', ms(s && s.p95_ms)), el('td', ms(s && s.p99_ms)), el('td', ms(s && s.max_ms)),
        el('td', ms(percentile(here, 50))), el('td', ms(percentile(here, 95)))));
    }
    this.table.replaceChildren(el('thead', head), el('tbody', rows));
    if (t && t.counters) {
      this.counters.replaceChildren(...Object.entries(t.counters).flatMap(([k, v]) => [el('dt', k), el('dd', String(v))]));
    }
    for (const c of this.charts.values()) c.chart.draw();
  }
}
