// AudioWorklet processor: microphone samples at the context's rate → 16 kHz mono signed
// 16-bit little-endian, posted to the page in 20 ms frames (640 bytes).

const OUT_RATE = 16000;
const FRAME = 320; // samples per frame: 20 ms at 16 kHz

class PcmProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    this.pos = 0; // fractional position of the next output sample in the input stream
    this.acc = 0;
    this.accN = 0;
    this.frame = new Int16Array(FRAME);
    this.fill = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || !input.length) return true;
    const ch = input[0];
    // Box-filter downsampling: average the input samples that fall in each output period
    // (enough against aliasing for speech recognition at these ratios).
    for (let i = 0; i < ch.length; i++) {
      let v = ch[i];
      if (input.length > 1) v = (v + input[1][i]) / 2;
      this.acc += v;
      this.accN += 1;
      this.pos += 1;
      if (this.pos >= this.step) {
        this.pos -= this.step;
        const s = Math.max(-1, Math.min(1, this.acc / this.accN));
        this.acc = 0;
        this.accN = 0;
        this.frame[this.fill++] = s < 0 ? s * 0x8000 : s * 0x7fff;
        if (this.fill === FRAME) {
          const out = new ArrayBuffer(FRAME * 2);
          const view = new DataView(out);
          for (let j = 0; j < FRAME; j++) view.setInt16(j * 2, this.frame[j], true);
          this.port.postMessage(out, [out]);
          this.fill = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor('coda-pcm', PcmProcessor);
