// LLM trace: one card per turn, newest first: provider and model, the prompt, the answer as
// its tokens stream in, a strip with one tick per token at its arrival time, and the
// timings (time to first token, duration, tokens, tokens/s, the turn's latency_trace), and
// its usage (tokens in and out, cost). Above the cards, one usage line per session: the
// running total that llm_result's session_usage carries.

import { el, ms, clock } from '../ui.js';

const MAX_CARDS = 50;
const MAX_SESSIONS = 8;

// "120 in · 9 out · 0.000024 USD"; "~" marks estimated counts.
export function usageText(u) {
  if (!u) return '';
  const est = u.estimated ? '~' : '';
  let cost = 'cost unknown';
  if (u.pricing === 'free') cost = 'free';
  else if (u.pricing === 'priced' && typeof u.cost === 'number') cost = `${u.cost.toFixed(6)} ${u.currency || ''}`.trim();
  return `${est}${u.input_tokens} in · ${est}${u.output_tokens} out · ${cost}`;
}

const STAGES = ['stt_ms', 'intent_ms', 'llm_ttft_ms', 'llm_ms', 'tts_first_audio_ms', 'tts_ms', 'total_ms', 'kernel_ms'];

export class TraceView {
  constructor(app) {
    this.app = app;
    this.id = 'trace';
    this.title = 'LLM trace';
    this.cards = new Map(); // turn_id -> card
    this.list = el('div.trace-list#trace-list');
    this.empty = el('p.muted', 'No language-model turn yet. Type something below.');
    this.sessions = new Map(); // session_id -> session_usage
    this.usage = el('div.usage-lines#usage-lines');
    this.root = el('section.view.trace-view', { dataset: { view: this.id } }, this.usage, this.empty, this.list);
    this.dirty = false;
  }

  card(turn, ts) {
    let c = this.cards.get(turn);
    if (c) return c;
    c = { turn, start: ts, tokens: [], text: '', changed: true };
    c.node = el('article.trace-card', { dataset: { turn } },
      el('header', el('b.t-turn', turn), el('span.t-model'), el('span.t-time', clock(ts)), el('span.t-state.badge')),
      el('div.t-prompt'),
      el('div.t-answer'),
      el('canvas.t-ticks', { height: 18 }),
      el('dl.t-stats'));
    this.cards.set(turn, c);
    this.list.prepend(c.node);
    while (this.list.children.length > MAX_CARDS) {
      const old = this.list.lastChild;
      if (this.cards.get(old.dataset.turn)?.node === old) this.cards.delete(old.dataset.turn);
      old.remove();
    }
    this.empty.hidden = true;
    return c;
  }

  onEvent(ev) {
    const d = ev.data || {};
    if (ev.type === '_gap' && d.epoch !== d.previous_epoch) this.cards.clear(); // ids restart
    if (!d.turn_id) return;
    let c;
    switch (ev.type) {
      case 'llm_start':
        c = this.card(d.turn_id, ev.timestamp);
        c.start = ev.timestamp;
        c.model = `${d.provider} · ${d.model}`;
        c.prompt = d.prompt;
        c.state = 'streaming';
        break;
      case 'llm_token':
        c = this.card(d.turn_id, ev.timestamp);
        c.tokens.push(ev.timestamp);
        c.text += d.text;
        c.state = c.state || 'streaming';
        break;
      case 'llm_result':
        c = this.card(d.turn_id, ev.timestamp);
        c.result = d;
        c.text = d.text;
        c.state = 'done';
        if (d.session_usage) {
          this.sessions.delete(ev.session_id);
          this.sessions.set(ev.session_id, d.session_usage);
          while (this.sessions.size > MAX_SESSIONS) this.sessions.delete(this.sessions.keys().next().value);
          this.usageChanged = true;
        }
        break;
      case 'llm_error':
        c = this.card(d.turn_id, ev.timestamp);
        c.error = `${d.code}: ${d.message}`;
        c.state = 'error';
        break;
      case 'latency_trace':
        c = this.cards.get(d.turn_id);
        if (c) c.latency = d;
        break;
      default:
        return;
    }
    if (c) {
      c.changed = true;
      this.dirty = true;
    }
  }

  onShow() {
    for (const c of this.cards.values()) c.changed = true;
    this.dirty = true;
  }

  render() {
    if (this.usageChanged) {
      this.usageChanged = false;
      const lines = [...this.sessions].reverse().map(([sid, u]) =>
        el('p.usage-line', { dataset: { session: sid } }, el('b', `session ${sid}`), ` ${usageText(u)}`));
      this.usage.replaceChildren(...lines);
    }
    for (const c of this.cards.values()) {
      if (!c.changed) continue;
      c.changed = false;
      const n = c.node;
      n.querySelector('.t-model').textContent = c.model || '';
      n.querySelector('.t-prompt').textContent = c.prompt ? `› ${c.prompt}` : '';
      n.querySelector('.t-answer').textContent = c.error || c.text;
      const badge = n.querySelector('.t-state');
      badge.textContent = c.state || '';
      badge.dataset.state = c.state || '';
      n.dataset.state = c.state || '';
      const ttft = c.tokens.length ? (c.tokens[0] - c.start) * 1000 : null;
      const stats = [
        ['first token', ms(ttft)],
        ['tokens', c.result ? c.result.tokens : c.tokens.length],
        ['duration', c.result ? ms(c.result.duration_ms) : '…'],
        ['tok/s', c.result ? c.result.tokens_per_second.toFixed(1) : '…'],
      ];
      if (c.result && c.result.usage) stats.push(['usage', usageText(c.result.usage)]);
      if (c.latency) {
        for (const k of STAGES) if (typeof c.latency[k] === 'number') stats.push([k.replace(/_ms$/, ''), ms(c.latency[k])]);
      }
      n.querySelector('.t-stats').replaceChildren(...stats.flatMap(([k, v]) => [el('dt', k), el('dd', String(v))]));
      this.ticks(n.querySelector('.t-ticks'), c);
    }
  }

  ticks(canvas, c) {
    const w = canvas.clientWidth;
    if (!w) return;
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(18 * dpr);
    const g = canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, 18);
    if (!c.tokens.length) return;
    const end = Math.max(c.tokens[c.tokens.length - 1], c.start + 0.001);
    const span = end - c.start;
    g.fillStyle = getComputedStyle(canvas).color;
    for (const t of c.tokens) g.fillRect(Math.round(((t - c.start) / span) * (w - 2)), 3, 1, 12);
  }
}
