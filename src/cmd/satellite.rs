//! `coda satellite`: a room's microphone and speaker for a core elsewhere. Listens for the
//! wake word on this machine's input device (or a `file:` input), streams what follows to
//! the core over NATS and plays the answer; no models beyond the wake word's reference.

use std::time::Duration;

use actix::{Actor, Supervisor};
use anyhow::{bail, Context};
use clap::Args;
use coda_actors::cluster::satellite::{PlaySink, SatelliteLink};
use coda_actors::components::ComponentRegistry;
use coda_actors::hub::EventHub;
use coda_actors::supervise::Supervision;
use coda_protocol::SttMode;

use super::{init_logging, ConfigChoice};
use crate::config::OverrideValue;
use crate::server;

/// `coda satellite` flags.
#[derive(Debug, Args)]
pub struct SatelliteArgs {
    /// The core's NATS server, e.g. nats://core.local:4222 (cluster.nats_url).
    #[arg(long, value_name = "URL")]
    pub core: Option<String>,
    /// This satellite's name: its conversation on the core is `sat-NAME` (cluster.node;
    /// default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where answers play: an output device (default: audio.output_device), or `file:PATH.wav`
    /// (each answer rewrites the file: machines without a sound card, tests).
    #[arg(long, value_name = "DEVICE|file:PATH")]
    pub output: Option<String>,
}

/// Runs the satellite until a signal.
pub fn run(choice: &ConfigChoice, args: SatelliteArgs) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    if let Some(core) = &args.core {
        overrides.push((
            "cluster.nats_url".into(),
            OverrideValue::Str(core.clone()),
            "--core".into(),
        ));
    }
    if let Some(name) = &args.name {
        overrides.push((
            "cluster.node".into(),
            OverrideValue::Str(name.clone()),
            "--name".into(),
        ));
    }
    let loaded = choice.load(overrides)?;
    init_logging(&loaded.settings.log.level, loaded.settings.log.format);
    let s = &loaded.settings;
    let Some(cluster_settings) = s.cluster_settings() else {
        bail!("a satellite needs its core: pass --core nats://HOST:4222 (or set cluster.nats_url)");
    };
    let name = cluster_settings.node.clone();
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| s.audio.output_device.clone());
    coda_actors::supervise::install_panic_hook();
    let system = actix_rt::System::new();
    system.block_on(async move {
        let hub = EventHub::start_hub(s.hub_settings());
        // The satellite's own events (wake_detected, component status) join the stream
        // as node NAME.
        let cluster = server::start_cluster(s, &hub)
            .await?
            .context("the cluster link did not start")?;
        let sink = match output.strip_prefix("file:") {
            Some(path) => PlaySink::File(path.into()),
            None => speaker(&output)?,
        };
        let components = ComponentRegistry::new();
        let budget = s.restart_budget();
        let hands = coda_actors::voice::Hands::default();
        let mut wake_settings = s.wake_settings();
        // No speech-to-text model here to check the word with: the matcher decides.
        wake_settings.verify = None;
        let wake_sup = Supervision::starting("wake_word", budget, &hub, &components);
        let (c, models) = (components.clone(), hands.wake.clone());
        let _wake = Supervisor::start(move |_| {
            coda_actors::wake::WakeWord::new(wake_sup, c, wake_settings.clone(), models.clone())
        });
        let link = SatelliteLink::new(
            name.clone(),
            cluster,
            sink,
            hands.follow_ups.clone(),
            server::DEVICE_SESSION.into(),
        )
        .start();
        let audio_sup = Supervision::starting("audio", budget, &hub, &components);
        let (c, h, audio_settings) = (components.clone(), hands.clone(), s.audio_settings());
        let speech = link.clone().recipient();
        let audio = Supervisor::start(move |_| {
            coda_actors::audio::AudioCapture::new(
                audio_sup,
                c,
                audio_settings.clone(),
                Some(speech.clone()),
            )
            .with_hands(h.clone())
        });
        // The reference loads (or is built, on a first start) in the background.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            hands.wake.loaded(Duration::from_secs(60)).await;
            let start = coda_actors::voice::DeviceListen::Start {
                session_id: server::DEVICE_SESSION.into(),
                mode: SttMode::Wake,
            };
            match audio.send(start).await {
                Ok(Ok(())) => break,
                Ok(Err(why)) if why.contains("loading") && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(why)) => bail!("cannot listen on the input device: {why}"),
                Err(e) => bail!("audio capture is not running: {e}"),
            }
        }
        println!("satellite {name} listening");
        server::wait_for_signal().await;
        tracing::info!("satellite stopping");
        anyhow::Ok(())
    })
}

#[cfg(feature = "audio")]
fn speaker(output: &str) -> anyhow::Result<PlaySink> {
    let speaker = coda_actors::audio::Speaker::open(output, None).with_context(|| {
        format!("the output device `{output}` (or pass --output file:PATH.wav)")
    })?;
    Ok(PlaySink::Speaker(std::sync::Arc::new(speaker)))
}

#[cfg(not(feature = "audio"))]
fn speaker(_: &str) -> anyhow::Result<PlaySink> {
    bail!("this build of coda has no sound output (built without the `audio` feature): pass --output file:PATH.wav")
}
