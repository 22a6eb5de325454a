// System metrics over time: the server's CPU and memory (and the machine's), GPU memory
// and utilisation when the server reports a GPU, and the alerts that fired or cleared.

import { el, clock } from '../ui.js';
import { LineChart } from '../chart.js';

export class MetricsView {
  constructor(app) {
    this.app = app;
    this.id = 'metrics';
    this.title = 'System metrics';
    const mk = (name, unit) => {
      const canvas = el('canvas.chart');
      const box = el('figure.chart-box', { dataset: { metric: name } }, el('figcaption', name), canvas);
      return { chart: new LineChart(canvas, { unit }), box };
    };
    this.cpu = mk('CPU', ' %');
    this.mem = mk('Memory', ' MiB');
    this.gpu = mk('GPU', '');
    this.gpu.box.hidden = true;
    this.samples = 0;
    this.latest = el('dl.latest#metrics-latest');
    this.gpuNote = el('p.muted#gpu-note', 'No GPU reported by the server.');
    this.alertList = el('ul.alerts#alert-list');
    this.root = el('section.view.metrics-view', { dataset: { view: this.id } },
      this.latest,
      el('div.chart-grid', this.cpu.box, this.mem.box, this.gpu.box),
      this.gpuNote,
      el('h3', 'Alerts'), this.alertList);
    this.dirty = true;
  }

  onShow() {
    for (const c of [this.cpu, this.mem, this.gpu]) c.chart.dirty = true;
  }

  onEvent(ev) {
    const d = ev.data || {};
    if (ev.type === 'system_metrics') {
      const t = ev.timestamp;
      this.samples += 1;
      this.last = d;
      this.lastTs = t;
      this.cpu.chart.push('process', t, d.cpu_percent);
      this.cpu.chart.push('machine', t, d.system_cpu_percent);
      this.mem.chart.push('process', t, d.memory_mb);
      this.mem.chart.push('machine used', t, d.system_memory_used_mb);
      if (typeof d.gpu_util === 'number' || typeof d.gpu_vram_mb === 'number') {
        this.gpu.chart.push('util %', t, d.gpu_util);
        this.gpu.chart.push('VRAM MiB', t, d.gpu_vram_mb);
        this.gpu.box.hidden = false;
        this.gpuNote.hidden = true;
      }
      this.dirty = true;
    } else if (ev.type === 'alert') {
      const li = el(`li.alert-item.level-${d.cleared ? 'cleared' : d.level}`,
        `${clock(ev.timestamp)} ${d.cleared ? 'cleared' : d.level}: ${d.message || `${d.metric} ${d.value} (threshold ${d.threshold})`}`);
      this.alertList.prepend(li);
      while (this.alertList.children.length > 100) this.alertList.lastChild.remove();
    }
  }

  render() {
    const d = this.last;
    if (d) {
      const f = (v, u) => (typeof v === 'number' ? `${v.toFixed(1)}${u}` : '–');
      const items = [
        ['samples', String(this.samples)],
        ['at', clock(this.lastTs)],
        ['process CPU', f(d.cpu_percent, ' %')],
        ['process memory', f(d.memory_mb, ' MiB')],
        ['machine CPU', f(d.system_cpu_percent, ' %')],
        ['machine memory', `${f(d.system_memory_used_mb, '')} / ${f(d.system_memory_total_mb, ' MiB')}`],
      ];
      if (typeof d.gpu_util === 'number') items.push(['GPU', `${f(d.gpu_util, ' %')} · ${f(d.gpu_vram_mb, ' MiB')}`]);
      this.latest.replaceChildren(...items.flatMap(([k, v]) => [el('dt', k), el('dd', { dataset: { k } }, v)]));
    }
    for (const c of [this.cpu, this.mem, this.gpu]) c.chart.draw();
  }
}
