//! Sound devices through cpal (feature `audio`): listing, choosing one by name, and the
//! capture thread. A cpal stream is `!Send`, so each one lives on a thread of its own that
//! owns it from creation to drop; the rest of the program talks to that thread through
//! channels and never blocks on it.

use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};

use super::convert::Resampler16k;
use super::echo::{EchoCanceller, EchoReference};
use super::{AudioError, ConfigRange, DeviceInfo, DeviceList};

/// The name a device is chosen by: cpal's id (for ALSA the PCM name, e.g. `default`,
/// `null`, `hw:CARD=PCH,DEV=0`).
fn device_id(d: &cpal::Device) -> String {
    d.id()
        .map(|id| id.id().to_string())
        .or_else(|_| d.description().map(|x| x.name().to_string()))
        .unwrap_or_else(|_| "?".into())
}

fn device_label(d: &cpal::Device) -> String {
    d.description()
        .map(|x| x.name().to_string())
        .unwrap_or_else(|_| device_id(d))
}

fn ranges(
    configs: Result<impl Iterator<Item = cpal::SupportedStreamConfigRange>, cpal::Error>,
) -> (Vec<ConfigRange>, Option<String>) {
    match configs {
        Ok(it) => (
            it.map(|c| ConfigRange {
                channels: c.channels(),
                min_rate: c.min_sample_rate(),
                max_rate: c.max_sample_rate(),
                format: c.sample_format().to_string(),
            })
            .collect(),
            None,
        ),
        Err(e) => (Vec::new(), Some(e.to_string())),
    }
}

/// alsa-lib prints its errors ("cannot find card '0'", …) straight to stderr from inside
/// cpal's calls: a screenful on a machine without a sound card. On this thread they go to
/// the log at DEBUG instead, and the caller says in one line of its own what they meant.
/// (The handler is thread-local in alsa-lib, and every device call runs on a thread that
/// called this first.)
pub fn quiet_alsa() {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::{c_char, c_int, CStr};
        unsafe extern "C" fn to_log(
            _file: *const c_char,
            _line: c_int,
            function: *const c_char,
            err: c_int,
            fmt: *const c_char,
            _args: *mut alsa_sys::__va_list_tag,
        ) {
            let text = |p: *const c_char| {
                if p.is_null() {
                    String::new()
                } else {
                    // SAFETY: alsa-lib passes NUL-terminated strings valid for the call.
                    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
                }
            };
            tracing::debug!(target: "coda::alsa", function = %text(function), err, "alsa-lib: {}", text(fmt));
        }
        // SAFETY: installs a plain function for this thread; alsa-lib keeps only the pointer.
        unsafe {
            alsa_sys::snd_lib_error_set_local(Some(to_log));
        }
    }
}

/// Every input and output device of the default host, with the defaults marked.
pub fn list_devices() -> Result<DeviceList, AudioError> {
    quiet_alsa();
    let host = cpal::default_host();
    let default_in = host.default_input_device().map(|d| device_id(&d));
    let default_out = host.default_output_device().map(|d| device_id(&d));
    let mut list = DeviceList {
        host: host.id().name().to_string(),
        inputs: Vec::new(),
        outputs: Vec::new(),
    };
    let inputs = host
        .input_devices()
        .map_err(|e| AudioError::Unavailable(format!("cannot list input devices: {e}")))?;
    for d in inputs {
        let id = device_id(&d);
        let (configs, error) = ranges(d.supported_input_configs());
        let default_config = d.default_input_config().ok().map(|c| ConfigRange {
            channels: c.channels(),
            min_rate: c.sample_rate(),
            max_rate: c.sample_rate(),
            format: c.sample_format().to_string(),
        });
        list.inputs.push(DeviceInfo {
            is_default: default_in.as_deref() == Some(id.as_str()),
            name: device_label(&d),
            id,
            default_config,
            configs,
            error,
        });
    }
    let outputs = host
        .output_devices()
        .map_err(|e| AudioError::Unavailable(format!("cannot list output devices: {e}")))?;
    for d in outputs {
        let id = device_id(&d);
        let (configs, error) = ranges(d.supported_output_configs());
        let default_config = d.default_output_config().ok().map(|c| ConfigRange {
            channels: c.channels(),
            min_rate: c.sample_rate(),
            max_rate: c.sample_rate(),
            format: c.sample_format().to_string(),
        });
        list.outputs.push(DeviceInfo {
            is_default: default_out.as_deref() == Some(id.as_str()),
            name: device_label(&d),
            id,
            default_config,
            configs,
            error,
        });
    }
    Ok(list)
}

/// Which way a device is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Capture.
    Input,
    /// Playback.
    Output,
}

/// Finds a device by `name` (empty or `default`: the host's default), exact id first,
/// then exact description, then a case-insensitive substring of either, and checks that
/// it can actually be opened in `dir` (cpal returns a default device even on a machine
/// without a sound card; only its config tells).
pub fn find_device(
    name: &str,
    dir: Direction,
) -> Result<(cpal::Device, cpal::SupportedStreamConfig), AudioError> {
    quiet_alsa();
    let host = cpal::default_host();
    let what = match dir {
        Direction::Input => "input",
        Direction::Output => "output",
    };
    let name = name.trim();
    let device = if name.is_empty() || name == "default" {
        match dir {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        }
        .ok_or_else(|| AudioError::Unavailable(format!("no default {what} device")))?
    } else {
        let devices: Vec<cpal::Device> = match dir {
            Direction::Input => host.input_devices().map(|d| d.collect()),
            Direction::Output => host.output_devices().map(|d| d.collect()),
        }
        .map_err(|e| AudioError::Unavailable(format!("cannot list {what} devices: {e}")))?;
        let lower = name.to_lowercase();
        let pick = devices
            .iter()
            .position(|d| device_id(d) == name)
            .or_else(|| devices.iter().position(|d| device_label(d) == name))
            .or_else(|| {
                devices.iter().position(|d| {
                    device_id(d).to_lowercase().contains(&lower)
                        || device_label(d).to_lowercase().contains(&lower)
                })
            });
        match pick {
            Some(i) => devices.into_iter().nth(i).ok_or_else(|| {
                AudioError::Unavailable(format!("{what} device `{name}` went away"))
            })?,
            None => {
                let known: Vec<String> = devices.iter().map(device_id).collect();
                return Err(AudioError::Unavailable(format!(
                    "no {what} device named `{name}` (known: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
    };
    let config = match dir {
        Direction::Input => device.default_input_config(),
        Direction::Output => device.default_output_config(),
    }
    .map_err(|e| {
        AudioError::Unavailable(format!(
            "{what} device `{}` cannot be used: {e}",
            device_id(&device)
        ))
    })?;
    Ok((device, config))
}

/// What the capture thread opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureInfo {
    /// Device id.
    pub device: String,
    /// Device rate, Hz.
    pub rate: u32,
    /// Device channels.
    pub channels: u16,
    /// Device sample format.
    pub format: String,
}

/// The running capture thread; dropping it closes the stream and ends the thread.
#[derive(Debug)]
pub struct CaptureHandle {
    stop: Option<std_mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
    /// What was opened.
    pub info: CaptureInfo,
}

impl Drop for CaptureHandle {
    fn drop(&mut self) {
        drop(self.stop.take());
        // The thread only drops the stream and returns: joining is quick, and it keeps
        // the device from being reopened while the old stream still holds it.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Converts one callback's interleaved samples of any format to mono f32.
fn to_mono(data: &cpal::Data, channels: usize) -> Option<Vec<f32>> {
    use cpal::Sample;
    fn mono<T: Sample + Copy>(s: &[T], ch: usize) -> Vec<f32>
    where
        f32: cpal::FromSample<T>,
    {
        let ch = ch.max(1);
        let scale = 1.0 / ch as f32;
        s.chunks_exact(ch)
            .map(|f| f.iter().map(|x| x.to_sample::<f32>()).sum::<f32>() * scale)
            .collect()
    }
    use cpal::SampleFormat as F;
    Some(match data.sample_format() {
        F::F32 => mono(data.as_slice::<f32>()?, channels),
        F::F64 => mono(data.as_slice::<f64>()?, channels),
        F::I8 => mono(data.as_slice::<i8>()?, channels),
        F::I16 => mono(data.as_slice::<i16>()?, channels),
        F::I32 => mono(data.as_slice::<i32>()?, channels),
        F::I64 => mono(data.as_slice::<i64>()?, channels),
        F::U8 => mono(data.as_slice::<u8>()?, channels),
        F::U16 => mono(data.as_slice::<u16>()?, channels),
        F::U32 => mono(data.as_slice::<u32>()?, channels),
        F::U64 => mono(data.as_slice::<u64>()?, channels),
        _ => return None,
    })
}

/// The prefix of an input "device" that is a WAV file.
pub const FILE_INPUT: &str = "file:";

/// Reads the WAV file of a `file:` input as 16 kHz mono.
fn read_input_file(path: &str) -> Result<Vec<f32>, AudioError> {
    let bad = |e: &dyn std::fmt::Display| {
        AudioError::Unavailable(format!(
            "input file {path}: {e} (audio.input_device = \"{FILE_INPUT}PATH.wav\")"
        ))
    };
    let mut reader = hound::WavReader::open(path).map_err(|e| bad(&e))?;
    let spec = reader.spec();
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(|e| bad(&e))?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << spec.bits_per_sample.clamp(1, 32).saturating_sub(1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(|e| bad(&e))?
        }
    };
    let mono = super::convert::downmix(&interleaved, usize::from(spec.channels.max(1)));
    super::convert::to_speech_rate(&mono, spec.sample_rate).map_err(|e| bad(&e))
}

/// 16 kHz mono audio from the capture thread.
#[derive(Debug, Clone, PartialEq)]
pub struct Captured {
    /// What the VAD and the wake word hear (echo-cancelled when a canceller runs).
    pub samples: Vec<f32>,
    /// With echo cancellation: the same stretch with less of the person suppressed while
    /// the assistant spoke, for the utterances (see [`EchoCanceller::process_both`]).
    pub keep: Option<Vec<f32>>,
}

/// The echo canceller of a capture thread (made on it: AEC3 is not `Send`), or none.
fn canceller(echo: Option<EchoReference>) -> Option<EchoCanceller> {
    match EchoCanceller::new(echo?) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "the input device's audio is not echo-cancelled");
            None
        }
    }
}

/// Hands one chunk of microphone audio on, echo-cancelled when there is a canceller.
fn forward(
    aec: &mut Option<EchoCanceller>,
    tx: &tokio::sync::mpsc::Sender<Captured>,
    chunk: Vec<f32>,
) {
    let captured = match aec.as_mut() {
        Some(c) => {
            let (samples, keep) = c.process_both(&chunk);
            Captured {
                samples,
                keep: Some(keep),
            }
        }
        None => Captured {
            samples: chunk,
            keep: None,
        },
    };
    if !captured.samples.is_empty() {
        // Full: the consumer is behind; drop rather than block the device.
        let _ = tx.try_send(captured);
    }
}

fn log_echo(aec: &Option<EchoCanceller>) {
    if let Some(c) = aec {
        let s = c.stats();
        tracing::debug!(
            frames = s.frames,
            bypassed = s.bypassed,
            underruns = s.underruns,
            "echo canceller done"
        );
    }
}

/// A `file:` input: the file's audio in real time, 20 ms at a time, then silence until
/// stopped, as a microphone would deliver it. Machines without a sound card (CI, demos)
/// run the device path with it; it is a stand-in, and says so in its id.
fn start_file_capture(
    path: &str,
    tx: tokio::sync::mpsc::Sender<Captured>,
    echo: Option<EchoReference>,
) -> Result<CaptureHandle, AudioError> {
    let audio = read_input_file(path)?;
    let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
    let thread = thread::Builder::new()
        .name("coda-capture-file".into())
        .spawn(move || {
            let mut aec = canceller(echo);
            let chunk = 320;
            let start = std::time::Instant::now();
            let mut sent = 0usize;
            loop {
                let from = sent * chunk;
                let samples = if from < audio.len() {
                    audio[from..(from + chunk).min(audio.len())].to_vec()
                } else {
                    vec![0.0; chunk]
                };
                forward(&mut aec, &tx, samples);
                sent += 1;
                let due = start + Duration::from_millis(20 * sent as u64);
                let wait = due.saturating_duration_since(std::time::Instant::now());
                match stop_rx.recv_timeout(wait) {
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    _ => {
                        log_echo(&aec);
                        return;
                    }
                }
            }
        })
        .map_err(|e| AudioError::Unavailable(format!("cannot start the capture thread: {e}")))?;
    Ok(CaptureHandle {
        stop: Some(stop_tx),
        thread: Some(thread),
        info: CaptureInfo {
            device: format!("{FILE_INPUT}{path}"),
            rate: crate::voice::SPEECH_SAMPLE_RATE,
            channels: 1,
            format: "wav file (stand-in for a microphone)".into(),
        },
    })
}

/// Checks that input `name` can be opened; returns its id.
pub fn probe_input(name: &str) -> Result<String, AudioError> {
    if let Some(path) = name.trim().strip_prefix(FILE_INPUT) {
        read_input_file(path)?;
        return Ok(name.trim().to_string());
    }
    find_device(name, Direction::Input).map(|(d, _)| device_id(&d))
}

/// Opens input device `name` on a thread of its own and streams 16 kHz mono chunks into
/// `tx` (a full channel drops the chunk: the device never waits on the program). With
/// `echo`, what the speaker plays is cancelled out first, on that thread. Returns once
/// the stream runs, or with the reason it cannot. `file:PATH` reads a WAV file instead
/// (see [`start_file_capture`]).
pub fn start_capture(
    name: &str,
    tx: tokio::sync::mpsc::Sender<Captured>,
    echo: Option<EchoReference>,
) -> Result<CaptureHandle, AudioError> {
    if let Some(path) = name.trim().strip_prefix(FILE_INPUT) {
        return start_file_capture(path, tx, echo);
    }
    let (ready_tx, ready_rx) = std_mpsc::channel::<Result<CaptureInfo, AudioError>>();
    let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
    let name = name.to_string();
    let thread = thread::Builder::new()
        .name("coda-capture".into())
        .spawn(move || {
            let mut aec = canceller(echo);
            // With a canceller the device's thread hands its audio to this one (which owns
            // the canceller); without, straight to the consumer.
            let (raw_tx, raw_rx) = std_mpsc::sync_channel::<Vec<f32>>(64);
            let direct = aec.is_none().then(|| tx.clone());
            let opened = (|| {
                let (device, config) = find_device(&name, Direction::Input)?;
                let channels = usize::from(config.channels());
                let rate = config.sample_rate();
                let format = config.sample_format();
                let mut resampler =
                    Resampler16k::new(rate).map_err(|e| AudioError::Unavailable(e.to_string()))?;
                let mut warned = false;
                let stream = device
                    .build_input_stream_raw(
                        config.config(),
                        format,
                        move |data, _| {
                            let Some(m) = to_mono(data, channels) else {
                                if !warned {
                                    warned = true;
                                    tracing::warn!(?format, "unsupported input sample format");
                                }
                                return;
                            };
                            let out = resampler.push(&m);
                            if !out.is_empty() {
                                // Full: the consumer is behind; drop rather than block the
                                // device's thread.
                                match &direct {
                                    Some(tx) => {
                                        let _ = tx.try_send(Captured {
                                            samples: out,
                                            keep: None,
                                        });
                                    }
                                    None => {
                                        let _ = raw_tx.try_send(out);
                                    }
                                }
                            }
                        },
                        |e| tracing::warn!(error = %e, "input stream error"),
                        Some(Duration::from_secs(2)),
                    )
                    .map_err(|e| {
                        AudioError::Unavailable(format!("cannot open the input stream: {e}"))
                    })?;
                stream.play().map_err(|e| {
                    AudioError::Unavailable(format!("cannot start the input stream: {e}"))
                })?;
                let info = CaptureInfo {
                    device: device_id(&device),
                    rate,
                    channels: config.channels(),
                    format: format.to_string(),
                };
                Ok((stream, info))
            })();
            match opened {
                Ok((stream, info)) => {
                    let _ = ready_tx.send(Ok(info));
                    // Until the handle is dropped (its sender with it).
                    if aec.is_none() {
                        let _ = stop_rx.recv();
                    } else {
                        while let Err(std_mpsc::TryRecvError::Empty) = stop_rx.try_recv() {
                            match raw_rx.recv_timeout(Duration::from_millis(50)) {
                                Ok(chunk) => forward(&mut aec, &tx, chunk),
                                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                            }
                        }
                        log_echo(&aec);
                    }
                    drop(stream);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| AudioError::Unavailable(format!("cannot start the capture thread: {e}")))?;
    match ready_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(info)) => Ok(CaptureHandle {
            stop: Some(stop_tx),
            thread: Some(thread),
            info,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(AudioError::Unavailable(
            "the input device did not open within 5 s".into(),
        )),
    }
}
