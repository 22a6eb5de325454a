// The dashboard: wires the connection to the views and the controls. Events are applied to
// each view's model as they arrive; the DOM is updated at most once per animation frame,
// and only for the view on screen, so a fast event stream cannot freeze the tab.

import { Connection } from './conn.js';
import { el, errorText } from './ui.js';
import { perf } from './perf.js';
import { startCapture, micUnavailable } from './mic.js';
import { TtsPlayer } from './tts.js';
import { TranscriptView } from './views/transcript.js';
import { TraceView } from './views/trace.js';
import { LatencyView } from './views/latency.js';
import { MetricsView } from './views/metrics.js';
import { MemoryView } from './views/memory.js';
import { ToolsView } from './views/tools.js';
import { ComponentsView } from './views/components.js';
import { EventsView } from './views/events.js';
import { ConfigView } from './views/config.js';

const $ = (sel) => document.querySelector(sel);
const LEVELS = ['debug', 'info', 'warning', 'error', 'critical'];
const MODE_LABELS = { listening_follow_up: 'listening (follow-up)' };

class App {
  constructor() {
    const params = new URLSearchParams(location.search);
    this.conn = new Connection({
      onEvent: (ev, raw) => this.dispatch(ev, raw),
      onState: (st) => this.onState(st),
      protocolVersion: params.get('protocol') || undefined,
    });
    this.views = [TranscriptView, TraceView, LatencyView, MetricsView, MemoryView, ToolsView,
      ComponentsView, EventsView, ConfigView].map((V) => new V(this));
    this.byId = Object.fromEntries(this.views.map((v) => [v.id, v]));
    this.active = null;
    this.alerts = new Map(); // metric -> level
    this.tts = new TtsPlayer();
    this.ptt = null;
    this.pttStats = { framesSent: 0, started: 0, refused: 0 };
    this.handsFree = null;
    this.handsFreeStats = { framesSent: 0, started: 0, refused: 0 };
    this.rate = { count: 0, since: performance.now(), value: 0 };
    this.headerDirty = true;
    this.buildControls();
    const main = $('#views');
    const nav = $('#nav');
    for (const v of this.views) {
      main.append(v.root);
      v.root.hidden = true;
      nav.append(el('a', { href: `#${v.id}`, dataset: { view: v.id } }, v.title));
    }
    window.addEventListener('hashchange', () => this.showView(location.hash.slice(1)));
    this.showView(location.hash.slice(1) || 'transcript');
    this.conn.afterHello = [['unsubscribe', { types: ['tts_audio'] }]];
    requestAnimationFrame(() => this.frame());
    setInterval(() => this.tick(), 500);
    this.conn.start();
  }

  buildControls() {
    $('#say').addEventListener('submit', (e) => {
      e.preventDefault();
      const input = $('#say-text');
      const text = input.value.trim();
      if (!text) return;
      this.conn.request('text_input', { text }).then(() => { input.value = ''; }, (err) => this.report(err));
    });
    // A ringing alarm: interrupt silences it (and every other) on the server.
    $('#alarm-stop').addEventListener('click', () => {
      this.conn.request('interrupt').catch((e) => this.report(e));
    });
    $('#interrupt').addEventListener('click', () => {
      this.conn.request('interrupt').then((r) => this.note(`interrupted: ${JSON.stringify(r)}`), (e) => this.report(e));
    });
    $('#demo').addEventListener('click', () => {
      this.conn.request('demo_flow', {}).then(() => this.note('demo flow started'), (e) => this.report(e));
    });
    $('#handsfree').addEventListener('click', () => (this.handsFree ? this.handsFreeOff() : this.handsFreeOn()));
    const ptt = $('#ptt');
    ptt.addEventListener('pointerdown', (e) => {
      try {
        ptt.setPointerCapture(e.pointerId); // the release is seen even off the button
      } catch {
        /* synthetic pointer: nothing to capture */
      }
      this.pttDown();
    });
    ptt.addEventListener('pointerup', () => this.pttUp());
    ptt.addEventListener('pointercancel', () => this.pttUp());
    ptt.addEventListener('keydown', (e) => {
      if ((e.key === ' ' || e.key === 'Enter') && !e.repeat) {
        e.preventDefault();
        this.pttDown();
      }
    });
    ptt.addEventListener('keyup', (e) => {
      if (e.key === ' ' || e.key === 'Enter') this.pttUp();
    });
    const why = micUnavailable();
    if (why) ptt.title = why;
    $('#hear').addEventListener('change', (e) => this.setHear(e.target.checked));
    $('#auth-panel').addEventListener('submit', (e) => {
      e.preventDefault();
      const t = $('#token-input').value.trim();
      if (t) this.conn.setToken(t);
    });
    $('#reconnect').addEventListener('click', () => {
      this.conn.attempt = 0;
      if (this.conn.ws) this.conn.drop();
      else this.conn.start();
    });
  }

  setHear(on) {
    if (on) this.tts.enable();
    else this.tts.disable();
    this.conn.afterHello = on ? [] : [['unsubscribe', { types: ['tts_audio'] }]];
    this.conn.request(on ? 'subscribe' : 'unsubscribe', { types: ['tts_audio'] }).catch((e) => this.report(e));
    this.headerDirty = true;
  }

  async pttDown() {
    if (this.ptt) return;
    const why = micUnavailable();
    if (why) {
      this.report({ message: `push-to-talk: ${why}` });
      return;
    }
    const p = { frames: [], accepted: false, failed: false, released: false, stop: null };
    this.ptt = p;
    this.setPtt('starting', 'starting…');
    const capture = startCapture((buf) => {
      if (p.accepted) {
        if (this.conn.sendBinary(buf)) this.pttStats.framesSent += 1;
      } else if (!p.failed) {
        p.frames.push(buf); // audio said before the server's answer is kept (up to 2 s)
        if (p.frames.length > 100) p.frames.shift();
      }
    });
    const start = this.conn.request('stt_start', { mode: 'push_to_talk', source: 'client' });
    start.catch(() => {}); // handled below, once the microphone is open
    try {
      p.stop = await capture;
    } catch (e) {
      p.failed = true;
      this.ptt = null;
      this.setPtt('', '');
      this.report({ message: `microphone: ${e.message || e}` });
      start.then(() => this.conn.request('stt_stop')).catch(() => {});
      return;
    }
    try {
      await start;
    } catch (e) {
      p.failed = true;
      this.ptt = null;
      this.pttStats.refused += 1;
      await p.stop();
      this.setPtt('refused', 'refused');
      this.report({ ...e, message: `the server did not accept microphone audio (${e.code}): ${e.message}` });
      return;
    }
    p.accepted = true;
    this.pttStats.started += 1;
    for (const buf of p.frames.splice(0)) if (this.conn.sendBinary(buf)) this.pttStats.framesSent += 1;
    this.setPtt('listening', 'listening — release to send');
    if (p.released) this.pttUp();
  }

  async pttUp() {
    const p = this.ptt;
    if (!p) return;
    p.released = true;
    if (!p.accepted) return; // pttDown finishes once the server has answered
    this.ptt = null;
    await p.stop();
    this.setPtt('', '');
    this.conn.request('stt_stop').catch((e) => this.report(e));
  }

  // Hands-free: the microphone streams until turned off; the server's voice activity
  // detector cuts it into utterances, each a turn (stt_start mode "continuous").
  async handsFreeOn() {
    const why = micUnavailable();
    if (why) {
      this.report({ message: `hands-free: ${why}` });
      return;
    }
    const h = { accepted: false, stop: null, mode: $('#wake').checked ? 'wake' : 'continuous' };
    this.handsFree = h;
    const button = $('#handsfree');
    button.setAttribute('aria-pressed', 'true');
    this.setPtt('starting', 'hands-free: starting…');
    try {
      await this.conn.request('stt_start', { mode: h.mode, source: 'client' });
    } catch (e) {
      this.handsFree = null;
      this.handsFreeStats.refused += 1;
      button.setAttribute('aria-pressed', 'false');
      this.setPtt('refused', 'refused');
      this.report({ ...e, message: `the server did not accept microphone audio (${e.code}): ${e.message}` });
      return;
    }
    try {
      h.stop = await startCapture((buf) => {
        if (this.handsFree === h && this.conn.sendBinary(buf)) this.handsFreeStats.framesSent += 1;
      });
    } catch (e) {
      this.handsFree = null;
      button.setAttribute('aria-pressed', 'false');
      this.setPtt('', '');
      this.conn.request('stt_stop').catch(() => {});
      this.report({ message: `microphone: ${e.message || e}` });
      return;
    }
    h.accepted = true;
    this.handsFreeStats.started += 1;
    this.setPtt('listening', h.mode === 'wake' ? 'hands-free: say the wake word' : 'hands-free: listening — just speak');
    if (this.handsFree !== h) await h.stop(); // turned off while starting
  }

  async handsFreeOff() {
    const h = this.handsFree;
    if (!h) return;
    this.handsFree = null;
    $('#handsfree').setAttribute('aria-pressed', 'false');
    this.setPtt('', '');
    if (h.stop) await h.stop();
    this.conn.request('stt_stop').catch((e) => this.report(e));
  }

  setPtt(state, text) {
    $('#ptt').dataset.state = state;
    $('#ptt-status').textContent = text;
  }

  showView(id) {
    const v = this.byId[id] || this.byId.transcript;
    if (this.active === v) return;
    if (this.active) this.active.root.hidden = true;
    this.active = v;
    v.root.hidden = false;
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.view === v.id);
    document.body.dataset.view = v.id;
    if (this.conn.state === 'connected' && v.onShow) v.onShow();
    v.dirty = true;
  }

  dispatch(ev, raw) {
    perf.event();
    this.rate.count += 1;
    const d = ev.data || {};
    switch (ev.type) {
      case 'mode_change':
        this.mode = d.mode;
        this.headerDirty = true;
        if (this.handsFree && this.handsFree.mode === 'wake' && this.handsFree.accepted) {
          if (d.mode === 'listening_follow_up') this.setPtt('listening', 'hands-free: ask on — no wake word needed');
          else if (d.mode === 'idle') this.setPtt('listening', 'hands-free: say the wake word');
        }
        break;
      case 'wake_detected':
        if (this.handsFree) this.setPtt('listening', `heard “${d.word}” — go on`);
        break;
      case 'alarm':
        $('#alarm').textContent = d.ringing ? `⏰ ${d.text}` : '';
        $('#alarm').hidden = !d.ringing;
        $('#alarm-stop').hidden = !d.ringing;
        break;
      case 'alert':
        if (d.cleared) this.alerts.delete(d.metric);
        else this.alerts.set(d.metric, d.level);
        this.headerDirty = true;
        break;
      case 'component_status':
      case 'system_info':
        this.headerDirty = true;
        break;
      case 'tts_audio':
        this.tts.play(d);
        this.headerDirty = true;
        break;
      case 'tts_paused':
        this.tts.pause();
        break;
      case 'tts_resumed':
        this.tts.resume();
        break;
      case 'conversation_message':
        if (d.interrupted) this.tts.stop();
        break;
      case 'command_error':
        // Errors of commands sent without an id (or by the server unprompted, e.g. a
        // refused audio frame) have no promise waiting: show them here.
        if (d.id == null) this.report({ code: d.code, message: d.message });
        break;
      case 'system_error':
        if (LEVELS.indexOf(d.level) >= 3) this.report({ code: d.code, message: `${d.component}: ${d.message}` });
        break;
      default:
        break;
    }
    for (const v of this.views) v.onEvent(ev, raw);
  }

  onState(st) {
    const s = $('#conn-state');
    const label = {
      connecting: 'connecting…', connected: 'connected', reconnecting: 'reconnecting…',
      auth_required: 'disconnected', version_mismatch: 'disconnected', idle: 'disconnected',
    }[st.state] || st.state;
    s.textContent = label;
    s.dataset.state = st.state;
    document.body.dataset.conn = st.state;
    $('#conn-detail').textContent = st.detail || '';
    $('#conn-pos').textContent = st.epoch ? `epoch ${st.epoch} · seq ${st.lastSeq}` : '';
    $('#auth-panel').hidden = st.state !== 'auth_required';
    $('#auth-error').textContent = st.state === 'auth_required' ? st.detail : '';
    const banner = $('#version-banner');
    banner.hidden = st.state !== 'version_mismatch';
    banner.textContent = `Protocol version mismatch: ${st.detail}. This dashboard cannot talk to this server; use a dashboard built for the server's version.`;
    if (st.state === 'connected' && this.lastState !== 'connected') {
      if (this.active && this.active.onShow) this.active.onShow();
      this.byId.components.refresh();
    }
    this.lastState = st.state;
  }

  /** Shows an error (a rejected command, a refused microphone...) where it is seen. */
  report(e) {
    const text = errorText(e);
    const box = $('#messages');
    const item = el('li.msg-error', { dataset: { code: e && e.code ? e.code : '' } }, text);
    box.prepend(item);
    while (box.children.length > 5) box.lastChild.remove();
    setTimeout(() => item.remove(), 20000);
  }

  note(text) {
    const box = $('#messages');
    const item = el('li.msg-note', text);
    box.prepend(item);
    while (box.children.length > 5) box.lastChild.remove();
    setTimeout(() => item.remove(), 5000);
  }

  tick() {
    const now = performance.now();
    this.rate.value = (this.rate.count * 1000) / (now - this.rate.since);
    this.rate.count = 0;
    this.rate.since = now;
    this.headerDirty = true;
  }

  frame() {
    requestAnimationFrame(() => this.frame());
    const v = this.active;
    if (v && v.dirty) {
      v.dirty = false;
      v.render();
    }
    if (this.headerDirty) {
      this.headerDirty = false;
      this.renderHeader();
    }
  }

  renderHeader() {
    const mode = $('#mode');
    mode.textContent = MODE_LABELS[this.mode] || this.mode || '–';
    mode.dataset.mode = this.mode || '';
    $('#rate').textContent = `${Math.round(this.rate.value)} ev/s`;
    const c = this.conn;
    $('#conn-pos').textContent = c.epoch ? `epoch ${c.epoch} · seq ${c.lastSeq}` : '';
    let worst = -1;
    for (const level of this.alerts.values()) worst = Math.max(worst, LEVELS.indexOf(level));
    const chip = $('#alerts-chip');
    chip.hidden = this.alerts.size === 0;
    chip.textContent = [...this.alerts.keys()].join(', ');
    document.body.dataset.alert = worst >= 0 ? LEVELS[worst] : '';
    document.body.dataset.components = this.byId.components.worst();
    $('#hear-count').textContent = $('#hear').checked ? `${this.tts.chunks} chunks` : '';
  }
}

window.coda = new App();
