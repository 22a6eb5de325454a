// Plays `tts_audio` chunks (base64 PCM s16le) in order, gap-free, with Web Audio.

export class TtsPlayer {
  constructor() {
    this.ctx = null;
    this.next = 0;
    this.chunks = 0;
    this.sources = new Set();
  }

  /** Someone talks over the answer (`tts_paused`): hold it where it is. */
  pause() {
    if (this.ctx) this.ctx.suspend();
  }

  /** It was not speech (`tts_resumed`): go on from there. */
  resume() {
    if (this.ctx) this.ctx.resume();
  }

  /** The answer was interrupted: drop what is scheduled, ready for the next one. */
  stop() {
    for (const src of this.sources) src.stop();
    this.sources.clear();
    this.next = 0;
    this.resume();
  }

  /** Must be called from a user gesture (browsers start audio only then). */
  enable() {
    if (!this.ctx) this.ctx = new AudioContext();
    this.ctx.resume();
  }

  disable() {
    if (this.ctx) this.ctx.close();
    this.ctx = null;
  }

  play(d) {
    this.chunks += 1;
    if (!this.ctx || d.format !== 'pcm_s16le') return;
    const bin = atob(d.audio);
    const channels = d.channels || 1;
    const frames = Math.floor(bin.length / 2 / channels);
    if (!frames) return;
    const buf = this.ctx.createBuffer(channels, frames, d.sample_rate);
    for (let c = 0; c < channels; c++) {
      const out = buf.getChannelData(c);
      for (let i = 0; i < frames; i++) {
        const k = (i * channels + c) * 2;
        let v = bin.charCodeAt(k) | (bin.charCodeAt(k + 1) << 8);
        if (v >= 0x8000) v -= 0x10000;
        out[i] = v / 0x8000;
      }
    }
    const src = this.ctx.createBufferSource();
    src.buffer = buf;
    src.connect(this.ctx.destination);
    src.onended = () => this.sources.delete(src);
    this.sources.add(src);
    const at = Math.max(this.ctx.currentTime + 0.02, this.next);
    src.start(at);
    this.next = at + buf.duration;
  }
}
