// A small line chart drawn on a canvas: a few series over time (or index), auto-scaled,
// with optional horizontal reference lines (p50/p95). Written here instead of vendoring a
// chart library: the dashboard needs only this, in about 150 lines.

const COLORS = ['#4e9af1', '#f0a13a', '#5cc689', '#e25c6a', '#a98ff0', '#3fc1c9', '#d4d45a'];

export class LineChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {object} o
   * @param {string} [o.unit] unit shown on the axis
   * @param {number} [o.max] most points kept per series
   * @param {boolean} [o.time] x is time (seconds) rather than an index
   */
  constructor(canvas, { unit = '', max = 600, time = true } = {}) {
    this.canvas = canvas;
    this.unit = unit;
    this.max = max;
    this.time = time;
    this.series = new Map(); // name -> {xs, ys, color}
    this.refs = []; // {label, value, color}
    this.dirty = true;
  }

  push(name, x, y) {
    if (typeof y !== 'number' || Number.isNaN(y)) return;
    let s = this.series.get(name);
    if (!s) {
      s = { xs: [], ys: [], color: COLORS[this.series.size % COLORS.length] };
      this.series.set(name, s);
    }
    s.xs.push(x);
    s.ys.push(y);
    if (s.xs.length > this.max * 1.25) {
      s.xs.splice(0, s.xs.length - this.max);
      s.ys.splice(0, s.ys.length - this.max);
    }
    this.dirty = true;
  }

  setRefs(refs) {
    this.refs = refs;
    this.dirty = true;
  }

  get empty() {
    return this.series.size === 0;
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const h = c.clientHeight;
    if (!w || !h) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
      this.dirty = true;
    }
    if (!this.dirty) return;
    this.dirty = false;
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const css = getComputedStyle(c);
    const fg = css.getPropertyValue('--chart-fg').trim() || '#999';
    const grid = css.getPropertyValue('--chart-grid').trim() || '#333';
    g.font = '11px system-ui, sans-serif';
    let xmin = Infinity, xmax = -Infinity, ymax = 0;
    for (const s of this.series.values()) {
      if (!s.xs.length) continue;
      xmin = Math.min(xmin, s.xs[0]);
      xmax = Math.max(xmax, s.xs[s.xs.length - 1]);
      for (const y of s.ys) if (y > ymax) ymax = y;
    }
    for (const r of this.refs) if (r.value > ymax) ymax = r.value;
    if (!Number.isFinite(xmin)) {
      g.fillStyle = fg;
      g.fillText('no data yet', 8, h / 2);
      return;
    }
    ymax = niceCeil(ymax || 1);
    if (xmax === xmin) xmax = xmin + 1;
    const L = 48, R = 8, T = 8, B = 18;
    const X = (x) => L + ((x - xmin) / (xmax - xmin)) * (w - L - R);
    const Y = (y) => T + (1 - y / ymax) * (h - T - B);
    g.strokeStyle = grid;
    g.fillStyle = fg;
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const v = (ymax * i) / 4;
      const y = Math.round(Y(v)) + 0.5;
      g.beginPath();
      g.moveTo(L, y);
      g.lineTo(w - R, y);
      g.stroke();
      g.fillText(fmt(v) + this.unit, 2, y + 4);
    }
    if (this.time) {
      const d = new Date(xmax * 1000);
      g.fillText(d.toLocaleTimeString(), w - R - 60, h - 4);
      g.fillText(`-${Math.round(xmax - xmin)} s`, L, h - 4);
    } else {
      g.fillText(`#${xmin}`, L, h - 4);
      g.fillText(`#${xmax}`, w - R - 30, h - 4);
    }
    for (const [i, r] of this.refs.entries()) {
      g.strokeStyle = r.color || fg;
      g.setLineDash([4, 4]);
      g.beginPath();
      const y = Math.round(Y(r.value)) + 0.5;
      g.moveTo(L, y);
      g.lineTo(w - R, y);
      g.stroke();
      g.setLineDash([]);
      g.fillStyle = r.color || fg;
      const label = `${r.label} ${fmt(r.value)}${this.unit}`;
      const lw = g.measureText(label).width;
      g.fillText(label, i % 2 ? w - R - lw - 4 : w - R - lw * 2 - 16, y - 3);
    }
    let lx = L + 4;
    for (const [name, s] of this.series) {
      g.strokeStyle = s.color;
      g.lineWidth = 1.5;
      g.beginPath();
      for (let i = 0; i < s.xs.length; i++) {
        const x = X(s.xs[i]), y = Y(s.ys[i]);
        if (i) g.lineTo(x, y);
        else g.moveTo(x, y);
      }
      g.stroke();
      if (s.xs.length === 1) {
        g.fillStyle = s.color;
        g.fillRect(X(s.xs[0]) - 2, Y(s.ys[0]) - 2, 4, 4);
      }
      g.fillStyle = s.color;
      g.fillText(name, lx, T + 10);
      lx += g.measureText(name).width + 12;
    }
  }
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmt(v) {
  if (v >= 1000) return `${(v / 1000).toFixed(v >= 10000 ? 0 : 1)}k`;
  if (v >= 10 || v === 0) return v.toFixed(0);
  return v.toFixed(1);
}
