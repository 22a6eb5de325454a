// Frame times and long tasks, measured in the page with the Performance API, so a test
// (or a curious user, in the console: codaPerf.snapshot()) can see whether the tab keeps up.

const frames = [];
const longTasks = [];
let last = 0;
let events = 0;
let since = performance.now();

function loop(t) {
  if (last) {
    frames.push(t - last);
    if (frames.length > 20000) frames.splice(0, 10000);
  }
  last = t;
  requestAnimationFrame(loop);
}
requestAnimationFrame(loop);

try {
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) longTasks.push(e.duration);
  }).observe({ type: 'longtask', buffered: true });
} catch {
  /* longtask timing not supported by this browser: frames only */
}

const pct = (a, p) => {
  if (!a.length) return null;
  const s = [...a].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};

export const perf = {
  /** Counts one received message. */
  event() {
    events += 1;
  },
  /** Starts a new measurement window. */
  reset() {
    frames.length = 0;
    longTasks.length = 0;
    events = 0;
    since = performance.now();
    last = 0;
  },
  /** Frame-interval and long-task statistics since the last reset. */
  snapshot() {
    const secs = (performance.now() - since) / 1000;
    return {
      seconds: secs,
      events,
      events_per_s: secs > 0 ? events / secs : 0,
      frames: frames.length,
      fps: secs > 0 ? frames.length / secs : 0,
      frame_p50_ms: pct(frames, 50),
      frame_p95_ms: pct(frames, 95),
      frame_p99_ms: pct(frames, 99),
      frame_max_ms: frames.length ? Math.max(...frames) : null,
      long_tasks: longTasks.length,
      long_task_total_ms: longTasks.reduce((a, b) => a + b, 0),
      long_task_max_ms: longTasks.length ? Math.max(...longTasks) : null,
    };
  },
};
window.codaPerf = perf;

// Uncaught errors, kept for tests and for a look in the console.
window.codaErrors = [];
window.addEventListener('error', (e) => window.codaErrors.push(String(e.message || e)));
window.addEventListener('unhandledrejection', (e) => window.codaErrors.push(`unhandled: ${JSON.stringify(e.reason)}`));
