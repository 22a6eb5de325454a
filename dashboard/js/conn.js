// The connection to `coda serve`: one WebSocket on the page's own origin, token auth with
// a first `auth` message, `hello` with the resume position {epoch, last_seq}, automatic
// reconnection with exponential backoff and jitter, deduplication by `seq`, and command
// ids matched to their `command_result` / `command_error`.

export const PROTOCOL_VERSION = '1.0';
const CLIENT = 'coda-dashboard/0.1';
// Types sent to one client only: never part of the numbered stream (docs/protocol.md).
const DIRECT = new Set(['replay', 'command_result', 'command_error', 'config']);
const TOKEN_KEY = 'coda.token';

const major = (v) => String(v || '').split('.')[0];

export class Connection {
  /**
   * @param {object} o
   * @param {(ev: object, raw: string|null) => void} o.onEvent every message (and markers)
   * @param {(st: object) => void} o.onState connection state changes
   * @param {string} [o.protocolVersion] the version this page claims (tests use another)
   */
  constructor({ onEvent, onState, protocolVersion = PROTOCOL_VERSION }) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.protocolVersion = protocolVersion;
    this.wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
    this.ws = null;
    this.state = 'idle';
    this.detail = '';
    this.epoch = null;
    this.lastSeq = 0;
    this.attempt = 0;
    this.timer = null;
    this.pending = new Map();
    this.nextId = 1;
    this.info = null; // last system_info from /api/system_info or get_system_info
    this.stopped = false;
    this.afterHello = []; // commands re-sent after every (re)connection
    this.stats = { received: 0, duplicates: 0, reconnects: 0, gaps: 0 };
    try {
      this.token = sessionStorage.getItem(TOKEN_KEY) || '';
    } catch {
      this.token = '';
    }
  }

  setState(state, detail = '') {
    this.state = state;
    this.detail = detail;
    this.onState({ state, detail, attempt: this.attempt, epoch: this.epoch, lastSeq: this.lastSeq });
  }

  /** Starts connecting (again). */
  start() {
    this.stopped = false;
    clearTimeout(this.timer);
    this.connect();
  }

  /** Stores a token for this browser tab and reconnects with it. */
  setToken(token) {
    this.token = token.trim();
    try {
      if (this.token) sessionStorage.setItem(TOKEN_KEY, this.token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      /* storage disabled: keep it in memory only */
    }
    this.attempt = 0;
    this.start();
  }

  forgetToken() {
    this.token = '';
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      /* ignore */
    }
  }

  async connect() {
    this.setState(this.attempt === 0 && this.lastSeq === 0 ? 'connecting' : 'reconnecting',
      this.attempt ? `attempt ${this.attempt + 1}` : '');
    // Probe over HTTP first: it tells "server down" from "token refused" (a WebSocket
    // refused with 401 looks like any other failure to a browser) and whether auth is on.
    let info;
    try {
      const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
      const ctl = new AbortController();
      const t = setTimeout(() => ctl.abort(), 5000);
      const resp = await fetch('/api/system_info', { headers, cache: 'no-store', signal: ctl.signal });
      clearTimeout(t);
      if (resp.status === 401) {
        const had = !!this.token;
        this.forgetToken();
        this.setState('auth_required', had
          ? 'the server refused this token'
          : 'this server requires an access token');
        return;
      }
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      info = await resp.json();
    } catch (e) {
      this.scheduleReconnect(`server unreachable (${e.message || e})`);
      return;
    }
    if (this.stopped) return;
    this.info = info;
    if (major(info.protocol_version) !== major(this.protocolVersion)) {
      this.versionMismatch(`the server speaks protocol ${info.protocol_version}, this page ${this.protocolVersion}`);
      // Still connect: the server's own refusal is the authority, and it says why.
    }
    this.open(info.auth_required);
  }

  open(authRequired) {
    let ws;
    try {
      ws = new WebSocket(this.wsUrl);
    } catch (e) {
      this.scheduleReconnect(String(e));
      return;
    }
    this.ws = ws;
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      if (authRequired) {
        if (!this.token) {
          this.setState('auth_required', 'this server requires an access token');
          ws.close(1000);
          return;
        }
        this.request('auth', { token: this.token }).catch(() => {});
      }
      const data = { client: CLIENT, protocol_version: this.protocolVersion, subscribe: ['*'] };
      if (this.epoch !== null) {
        data.epoch = this.epoch;
        data.last_seq = this.lastSeq;
      }
      this.request('hello', data).then((reply) => {
        this.attempt = 0;
        if (this.epoch === null) this.epoch = reply.epoch;
        this.setState('connected', `server ${reply.server_version}`);
        for (const [type, d] of this.afterHello) this.request(type, d).catch(() => {});
      }).catch((e) => {
        // A server that never answers hello is as good as gone: start over.
        if (e.code === 'timeout' && this.ws === ws) this.drop();
      });
    };
    ws.onmessage = (m) => {
      if (typeof m.data === 'string') this.receive(m.data);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject({ code: 'disconnected', message: 'the connection closed before the answer' });
      }
      this.pending.clear();
      if (this.state === 'version_mismatch' || this.state === 'auth_required' || this.stopped) return;
      if (ev.code === 1002) {
        this.versionMismatch(ev.reason || 'protocol version mismatch');
        return;
      }
      if (ev.code === 1008 && this.authError) {
        this.setState('auth_required', this.authError);
        this.authError = null;
        return;
      }
      this.scheduleReconnect(ev.reason || `connection closed (${ev.code})`);
    };
  }

  versionMismatch(msg) {
    this.stopped = true;
    clearTimeout(this.timer);
    this.setState('version_mismatch', msg);
  }

  scheduleReconnect(why) {
    if (this.stopped) return;
    clearTimeout(this.timer);
    // Exponential backoff, capped, with "equal jitter": half fixed, half random, so a
    // restarted server is not hit by every dashboard at the same instant.
    const base = Math.min(8000, 250 * 2 ** this.attempt);
    const delay = base / 2 + Math.random() * (base / 2);
    this.attempt += 1;
    this.stats.reconnects += 1;
    this.setState('reconnecting', `${why}; retrying in ${(delay / 1000).toFixed(1)} s`);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  receive(text) {
    let ev;
    try {
      ev = JSON.parse(text);
    } catch {
      return;
    }
    this.stats.received += 1;
    if (ev.version && major(ev.version) !== major(this.protocolVersion) && this.state !== 'version_mismatch') {
      this.versionMismatch(`the server sends protocol ${ev.version}; this page speaks ${this.protocolVersion}`);
    }
    const type = ev.type;
    if (type === 'command_result' || type === 'command_error') {
      this.answer(ev);
      this.onEvent(ev, text);
      return;
    }
    if (type === 'replay') {
      this.onEvent(ev, text); // the envelope first, then what it carries
      this.replay(ev);
      return;
    }
    if (type === 'system_error' && ev.data && ev.data.code === 'version_mismatch') {
      this.onEvent(ev, text);
      this.versionMismatch(ev.data.message || 'protocol version mismatch');
      return;
    }
    if (DIRECT.has(type)) {
      this.onEvent(ev, text);
      return;
    }
    this.stream(ev, text);
  }

  /** A numbered stream event: delivered once, in order, whatever the races with replays. */
  stream(ev, text, replayed = false) {
    if (typeof ev.seq === 'number') {
      if (ev.seq <= this.lastSeq) {
        this.stats.duplicates += 1;
        return;
      }
      this.lastSeq = ev.seq;
    }
    ev.replayed = replayed;
    this.onEvent(ev, text);
  }

  replay(ev) {
    const d = ev.data || {};
    const epochChanged = this.epoch !== null && d.epoch !== this.epoch;
    if (epochChanged) {
      // A new stream (the server restarted or lost its history): old numbers mean nothing.
      this.lastSeq = 0;
    }
    if (this.epoch !== null && (!d.complete || epochChanged)) {
      this.stats.gaps += 1;
      this.onEvent({
        type: '_gap', seq: null, timestamp: Date.now() / 1000, session_id: 'system',
        data: {
          reason: epochChanged ? 'the server restarted (new event stream): events in between are not available'
            : 'some events were no longer retained by the server',
          epoch: d.epoch, previous_epoch: this.epoch,
        },
      }, null);
    }
    this.epoch = d.epoch;
    for (const e of d.events || []) this.stream(e, null, true);
    if (typeof d.last_seq === 'number' && d.last_seq > this.lastSeq) this.lastSeq = d.last_seq;
    this.onState({ state: this.state, detail: this.detail, attempt: this.attempt, epoch: this.epoch, lastSeq: this.lastSeq });
  }

  answer(ev) {
    const d = ev.data || {};
    if (ev.type === 'command_error') {
      if (d.code === 'unauthorized') {
        this.forgetToken();
        this.authError = `the server refused the token: ${d.message}`;
      }
      if (d.code === 'version_mismatch') this.versionMismatch(d.message);
    }
    const p = d.id != null ? this.pending.get(d.id) : undefined;
    if (!p) return;
    this.pending.delete(d.id);
    clearTimeout(p.timer);
    if (ev.type === 'command_result') p.resolve(d.data);
    else p.reject({ code: d.code, message: d.message, type: p.type });
  }

  /** Sends a command with an id; resolves with `command_result.data`, rejects with
   *  `{code, message}` (a `command_error`, a timeout, or no connection). */
  request(type, data = {}, timeoutMs = 15000) {
    return new Promise((resolve, reject) => {
      const ws = this.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) {
        reject({ code: 'disconnected', message: 'not connected to the server', type });
        return;
      }
      const id = `d-${this.nextId++}`;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject({ code: 'timeout', message: `no answer to ${type} within ${timeoutMs / 1000} s`, type });
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer, type });
      ws.send(JSON.stringify({ id, type, data, timestamp: new Date().toISOString() }));
    });
  }

  /** Sends raw bytes (client audio). False when not connected. */
  sendBinary(buf) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(buf);
    return true;
  }

  /** Drops the socket as a network failure would (tests and the "reconnect" button). */
  drop() {
    if (this.ws) this.ws.close(4000, 'dropped by the dashboard');
  }
}
