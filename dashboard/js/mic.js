// Push-to-talk with the browser's microphone: getUserMedia → AudioWorklet (or, where
// worklets are missing, a ScriptProcessor) → 16 kHz mono s16le frames for the server.

/** Why the microphone cannot be used here, or null. */
export function micUnavailable() {
  if (!window.isSecureContext) return 'the microphone needs a secure page (https, or http://localhost / 127.0.0.1)';
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return 'this browser has no microphone API';
  return null;
}

/**
 * Starts capturing; `onFrame(ArrayBuffer)` gets 20 ms of 16 kHz s16le audio at a time.
 * Resolves with a `stop()` function.
 */
export async function startCapture(onFrame) {
  const why = micUnavailable();
  if (why) throw new Error(why);
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
  });
  const ctx = new AudioContext();
  const src = ctx.createMediaStreamSource(stream);
  let node;
  if (ctx.audioWorklet) {
    await ctx.audioWorklet.addModule(new URL('./pcm-worklet.js', import.meta.url));
    node = new AudioWorkletNode(ctx, 'coda-pcm', { numberOfInputs: 1, numberOfOutputs: 0 });
    node.port.onmessage = (m) => onFrame(m.data);
    src.connect(node);
  } else {
    node = scriptProcessor(ctx, onFrame);
    src.connect(node);
    node.connect(ctx.destination);
  }
  return async () => {
    src.disconnect();
    node.disconnect();
    for (const t of stream.getTracks()) t.stop();
    await ctx.close();
  };
}

// The deprecated ScriptProcessor path (old browsers): same conversion on the main thread.
function scriptProcessor(ctx, onFrame) {
  const node = ctx.createScriptProcessor(4096, 1, 1);
  const step = ctx.sampleRate / 16000;
  let pos = 0, acc = 0, n = 0;
  let frame = [];
  node.onaudioprocess = (e) => {
    const ch = e.inputBuffer.getChannelData(0);
    for (let i = 0; i < ch.length; i++) {
      acc += ch[i];
      n += 1;
      pos += 1;
      if (pos >= step) {
        pos -= step;
        const s = Math.max(-1, Math.min(1, acc / n));
        acc = 0;
        n = 0;
        frame.push(s < 0 ? s * 0x8000 : s * 0x7fff);
        if (frame.length === 320) {
          const out = new ArrayBuffer(640);
          const v = new DataView(out);
          frame.forEach((x, j) => v.setInt16(j * 2, x, true));
          onFrame(out);
          frame = [];
        }
      }
    }
  };
  return node;
}
