// Live transcript and conversation: what the user said or typed, the assistant's answer
// as it streams, interim speech recognition, interruptions, and gap markers after a
// reconnection that could not recover everything.

import { el, clock } from '../ui.js';

const MAX_ITEMS = 300;

export class TranscriptView {
  constructor(app) {
    this.app = app;
    this.id = 'transcript';
    this.title = 'Transcript';
    this.items = []; // {kind, turn, role, text, ts, node, done, interrupted}
    this.byTurn = new Map(); // turn_id -> {user, assistant}
    this.interim = el('div.interim#interim');
    this.list = el('div.chat#chat');
    this.scroller = el('div.chat-scroll', this.list, this.interim);
    this.root = el('section.view.transcript-view', { dataset: { view: this.id } }, this.scroller);
    this.dirty = false;
  }

  turn(id) {
    let t = this.byTurn.get(id);
    if (!t) {
      t = { user: null, assistant: null };
      this.byTurn.set(id, t);
    }
    return t;
  }

  add(item) {
    item.node = el(`div.msg.${item.role}`, { dataset: { turn: item.turn || '' } },
      el('div.meta', `${item.label || item.role} · ${clock(item.ts)}`),
      el('div.text'));
    // Streaming from the start: render() runs a frame later, and until then an answer
    // just begun looked finished (to a script counting finished answers, too).
    item.node.classList.toggle('streaming', item.role === 'assistant' && !item.done);
    this.items.push(item);
    this.list.append(item.node);
    if (this.items.length > MAX_ITEMS) {
      const old = this.items.shift();
      old.node.remove();
    }
    item.changed = true;
    this.dirty = true;
    return item;
  }

  onEvent(ev) {
    const d = ev.data || {};
    switch (ev.type) {
      case '_gap':
        this.add({ role: 'gap', label: 'gap', text: d.reason, ts: ev.timestamp });
        // A new stream numbers its turns afresh: ids of the old one must not match.
        if (d.epoch !== d.previous_epoch) this.byTurn.clear();
        break;
      case 'conversation_turn': {
        const t = this.turn(d.turn_id);
        if (!t.user) t.user = this.add({ role: 'user', label: `you (${d.source})`, turn: d.turn_id, text: d.user_text, ts: ev.timestamp });
        this.interim.textContent = '';
        break;
      }
      case 'conversation_message': {
        if (!d.turn_id) {
          this.add({ role: d.role, text: d.content, ts: ev.timestamp });
          break;
        }
        const t = this.turn(d.turn_id);
        if (d.role === 'user') {
          if (!t.user) t.user = this.add({ role: 'user', turn: d.turn_id, text: d.content, ts: ev.timestamp });
        } else if (d.role === 'assistant') {
          if (!t.assistant) t.assistant = this.add({ role: 'assistant', label: 'coda', turn: d.turn_id, text: '', ts: ev.timestamp });
          const a = t.assistant;
          a.text = d.content + (d.interrupted ? ' …' : '');
          a.cut = d.cut;
          a.interrupted = !!d.interrupted;
          a.done = true;
          a.changed = true;
          this.dirty = true;
        } else {
          this.add({ role: d.role, turn: d.turn_id, text: d.content, ts: ev.timestamp });
        }
        break;
      }
      case 'llm_token': {
        const t = this.turn(d.turn_id);
        if (!t.assistant) t.assistant = this.add({ role: 'assistant', label: 'coda', turn: d.turn_id, text: '', ts: ev.timestamp });
        if (!t.assistant.done) {
          t.assistant.text += d.text;
          t.assistant.changed = true;
          this.dirty = true;
        }
        break;
      }
      case 'llm_result': {
        const t = d.turn_id && this.turn(d.turn_id);
        if (t && t.assistant && !t.assistant.done) {
          t.assistant.text = d.text;
          t.assistant.changed = true;
          this.dirty = true;
        }
        break;
      }
      case 'llm_error':
      case 'stt_error':
      case 'tool_error':
        this.add({ role: 'error', label: ev.type, turn: d.turn_id, text: `${d.code}: ${d.message}`, ts: ev.timestamp });
        break;
      case 'stt_interim':
        this.interim.textContent = `hearing: ${d.text}`;
        break;
      case 'stt_result':
        this.interim.textContent = '';
        break;
      case 'stt_start':
        this.interim.textContent = 'listening…';
        break;
      default:
        break;
    }
  }

  render() {
    const s = this.scroller;
    const atBottom = s.scrollTop + s.clientHeight >= s.scrollHeight - 40;
    for (const it of this.items) {
      if (!it.changed) continue;
      it.changed = false;
      const text = it.node.querySelector('.text');
      text.textContent = it.text;
      it.node.classList.toggle('streaming', it.role === 'assistant' && !it.done);
      it.node.classList.toggle('interrupted', !!it.interrupted);
      if (it.cut) it.node.title = `not spoken: ${it.cut}`;
    }
    if (atBottom) s.scrollTop = s.scrollHeight;
  }
}
