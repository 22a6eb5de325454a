//! Playback through rodio (feature `audio`). The output stream is `!Send`, so one thread
//! owns the device sink and a rodio `Player` queue; [`Speaker`] is the cheap, cloneable
//! handle the rest of the program uses. Sounds play in the order they are queued; each
//! `play` resolves when its sound has been played to the end (or was stopped).

use std::collections::VecDeque;
use std::num::NonZero;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cpal::traits::DeviceTrait;
use rodio::Source;
use tokio::sync::oneshot;

use super::device::{find_device, Direction};
use super::echo::EchoReference;
use super::{AudioError, PlayOutcome};

enum Cmd {
    Play {
        samples: Vec<f32>,
        rate: u32,
        played: Option<Arc<AtomicUsize>>,
        done: oneshot::Sender<PlayOutcome>,
    },
    Stop {
        done: oneshot::Sender<Duration>,
    },
    /// Hold what is queued where it is (`true`) or go on with it (`false`).
    Pause(bool),
}

/// A handle to the playback thread.
#[derive(Debug, Clone)]
pub struct Speaker {
    tx: std_mpsc::Sender<Cmd>,
    device: Arc<str>,
    /// Nanoseconds since `epoch` when the output last pulled a sample of ours.
    last_pull: Arc<AtomicU64>,
    epoch: Instant,
}

/// A source that notes when the device last pulled a sample from it (to measure how soon
/// a stop really silences the output), and hands what it pulled to echo cancellation.
struct Tracked<S> {
    inner: S,
    last_pull: Arc<AtomicU64>,
    epoch: Instant,
    n: u32,
    tap: Option<Tap>,
    /// Samples of this sound the device has taken.
    played: Option<Arc<AtomicUsize>>,
}

/// Pulled samples on their way to the [`EchoReference`], 10 ms at a time.
struct Tap {
    reference: EchoReference,
    rate: u32,
    buf: Vec<f32>,
}

impl Tap {
    fn offer(&mut self) {
        // Taken, or nobody listens: either way they are done with. Busy: kept for the
        // next try, but never more than a second of them.
        if self.reference.try_played(self.rate, &self.buf) || self.buf.len() > self.rate as usize {
            self.buf.clear();
        }
    }
}

impl<S: Source> Iterator for Tracked<S> {
    type Item = rodio::Sample;

    fn next(&mut self) -> Option<Self::Item> {
        // Every 64 samples is enough resolution (≈1.5 ms at 44.1 kHz stereo).
        self.n = self.n.wrapping_add(1);
        if self.n.is_multiple_of(64) {
            self.last_pull
                .store(self.epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        let s = self.inner.next();
        if let (Some(played), Some(_)) = (&self.played, s) {
            played.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(tap) = self.tap.as_mut() {
            match s {
                // Copied only while a canceller reads: the input device is not always open.
                Some(v) if tap.reference.is_listening() => {
                    tap.buf.push(v);
                    if tap.buf.len() >= (tap.rate / 100).max(1) as usize {
                        tap.offer();
                    }
                }
                None if !tap.buf.is_empty() => tap.offer(),
                _ => {}
            }
        }
        s
    }
}

impl<S: Source> Source for Tracked<S> {
    fn current_span_len(&self) -> Option<usize> {
        self.inner.current_span_len()
    }
    fn channels(&self) -> rodio::ChannelCount {
        self.inner.channels()
    }
    fn sample_rate(&self) -> rodio::SampleRate {
        self.inner.sample_rate()
    }
    fn total_duration(&self) -> Option<Duration> {
        self.inner.total_duration()
    }
}

impl Speaker {
    /// Opens output device `name` (empty or `default`: the default) on its own thread.
    /// What it plays goes to `echo` as well, for echo cancellation on the input device.
    /// Fails, with the reason, when there is no usable output device.
    pub fn open(name: &str, echo: Option<EchoReference>) -> Result<Speaker, AudioError> {
        let (ready_tx, ready_rx) = std_mpsc::channel::<Result<String, AudioError>>();
        let (tx, rx) = std_mpsc::channel::<Cmd>();
        let name = name.to_string();
        let last_pull = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let lp = last_pull.clone();
        thread::Builder::new()
            .name("coda-playback".into())
            .spawn(move || {
                let opened = find_device(&name, Direction::Output).and_then(|(device, _)| {
                    let id = device
                        .id()
                        .map(|i| i.id().to_string())
                        .unwrap_or_else(|_| name.clone());
                    let mut sink = rodio::DeviceSinkBuilder::from_device(device)
                        .and_then(|b| {
                            b.with_error_callback(
                                |e| tracing::warn!(error = %e, "output stream error"),
                            )
                            .open_stream()
                        })
                        .map_err(|e| {
                            AudioError::Unavailable(format!("cannot open output `{id}`: {e}"))
                        })?;
                    sink.log_on_drop(false);
                    Ok((sink, id))
                });
                match opened {
                    Ok((sink, id)) => {
                        let _ = ready_tx.send(Ok(id));
                        run(sink, rx, lp, epoch, echo);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| {
                AudioError::Unavailable(format!("cannot start the playback thread: {e}"))
            })?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(device)) => Ok(Speaker {
                tx,
                device: device.into(),
                last_pull,
                epoch,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(AudioError::Unavailable(
                "the output device did not open within 5 s".into(),
            )),
        }
    }

    /// The device id in use.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Queues mono `samples` at `rate`; resolves when they have played (or were stopped).
    pub async fn play(&self, samples: Vec<f32>, rate: u32) -> PlayOutcome {
        self.play_counted(samples, rate, None).await
    }

    /// Like [`play`](Self::play), adding each sample the output device takes to `played`
    /// (what a listener has heard when the sound is stopped part-way).
    pub async fn play_counted(
        &self,
        samples: Vec<f32>,
        rate: u32,
        played: Option<Arc<AtomicUsize>>,
    ) -> PlayOutcome {
        let (done, rx) = oneshot::channel();
        if self
            .tx
            .send(Cmd::Play {
                samples,
                rate,
                played,
                done,
            })
            .is_err()
        {
            return PlayOutcome::Failed("the playback thread has ended".into());
        }
        rx.await
            .unwrap_or_else(|_| PlayOutcome::Failed("the playback thread has ended".into()))
    }

    /// Stops everything queued and playing now. Resolves once the player is cleared, with
    /// the time the playback thread took to act on it.
    pub async fn stop(&self) -> Duration {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Cmd::Stop { done }).is_err() {
            return Duration::ZERO;
        }
        rx.await.unwrap_or_default()
    }

    /// Sends a stop without waiting.
    pub fn stop_now(&self) {
        let (done, _rx) = oneshot::channel();
        let _ = self.tx.send(Cmd::Stop { done });
    }

    /// Pauses (`true`) or resumes (`false`) playback without dropping what is queued: the
    /// sound playing goes on from the sample where it paused, and sounds queued while
    /// paused wait. A stop clears the pause.
    pub fn pause_now(&self, paused: bool) {
        let _ = self.tx.send(Cmd::Pause(paused));
    }

    /// When the output device last pulled one of our samples.
    pub fn last_pull(&self) -> Option<Instant> {
        match self.last_pull.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.epoch + Duration::from_nanos(ns)),
        }
    }
}

fn run(
    sink: rodio::MixerDeviceSink,
    rx: std_mpsc::Receiver<Cmd>,
    last_pull: Arc<AtomicU64>,
    epoch: Instant,
    echo: Option<EchoReference>,
) {
    let player = rodio::Player::connect_new(sink.mixer());
    let mut queued: VecDeque<oneshot::Sender<PlayOutcome>> = VecDeque::new();
    let mut paused = false;
    loop {
        // While something plays, wake every 5 ms to notice what finished.
        let cmd = if queued.is_empty() {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => break,
            }
        } else {
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(c) => Some(c),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
        };
        match cmd {
            Some(Cmd::Play {
                samples,
                rate,
                played,
                done,
            }) => {
                let (Some(rate), Some(ch)) = (NonZero::new(rate), NonZero::new(1u16)) else {
                    let _ = done.send(PlayOutcome::Failed("zero sample rate".into()));
                    continue;
                };
                if samples.is_empty() {
                    let _ = done.send(PlayOutcome::Played);
                    continue;
                }
                let source = Tracked {
                    inner: rodio::buffer::SamplesBuffer::new(ch, rate, samples),
                    last_pull: last_pull.clone(),
                    epoch,
                    n: 0,
                    played,
                    tap: echo.as_ref().map(|reference| Tap {
                        reference: reference.clone(),
                        rate: rate.get(),
                        buf: Vec::new(),
                    }),
                };
                player.append(source);
                if !paused {
                    player.play();
                }
                queued.push_back(done);
            }
            Some(Cmd::Stop { done }) => {
                let t = Instant::now();
                paused = false;
                player.clear();
                for d in queued.drain(..) {
                    let _ = d.send(PlayOutcome::Stopped);
                }
                let _ = done.send(t.elapsed());
            }
            Some(Cmd::Pause(on)) => {
                paused = on;
                // The player's own flag: its sources hand out silence, unpulled, while set.
                if on {
                    player.pause();
                } else if !queued.is_empty() {
                    player.play();
                }
            }
            None => {}
        }
        // Sounds that left the player's queue have played to the end.
        let remaining = player.len();
        while queued.len() > remaining {
            if let Some(d) = queued.pop_front() {
                let _ = d.send(PlayOutcome::Played);
            }
        }
    }
    player.stop();
    drop(sink);
}
