//! Beyond one machine: the hub's events on a NATS JetStream stream.
//!
//! - [`Bridge`]: every event this node's hub numbers goes to subject
//!   `coda.<node>.<type>` of one stream, with headers `Coda-Node`, `Coda-Epoch`,
//!   `Coda-Seq` and the message id `<node>.<epoch>.<seq>` (JetStream drops a retry it
//!   already has). Events wait in an on-disk [`Outbox`] until acknowledged, so a NATS
//!   restart or outage loses none and doubles none; they go out in order.
//! - [`open_view`]: a WebSocket client that says `hello {"scope":"cluster"}` reads the
//!   stream instead of the local hub: every node's events in stream order, numbered by
//!   the stream sequence (the envelope also carries `node` and `node_seq`), resumable by
//!   that sequence on any node.
//!
//! Why JetStream and not something of our own: it already has per-stream sequences,
//! start-at-sequence consumers, deduplication by message id, retention limits and leaf
//! nodes. Audio (`tts_audio`) is not put on the stream.

mod bridge;
mod outbox;
pub mod pool;
pub mod satellite;
mod view;

pub use bridge::Bridge;
pub use outbox::{Outbox, Record};
pub use view::{open_view, ViewStarted};

use std::path::PathBuf;
use std::time::Duration;

/// The `[cluster]` settings.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// This node's name (a subject token: letters, digits, `-`, `_`).
    pub node: String,
    /// The JetStream stream's name.
    pub stream: String,
    /// Where the outbox lives.
    pub outbox_dir: PathBuf,
    /// Most events the outbox holds while NATS is unreachable.
    pub outbox_max_events: usize,
    /// The stream's retention: most events kept.
    pub max_events: i64,
    /// The stream's retention: oldest event kept.
    pub max_age: Duration,
    /// Events a new cluster client gets as its replay.
    pub replay_size: usize,
    /// Most events one resume replays (older missing ones make it `complete:false`): a
    /// client cannot make the node hold the whole stream for it.
    pub replay_max: usize,
}

/// Subject prefix of every event.
pub const SUBJECT_PREFIX: &str = "coda";
/// How long JetStream remembers message ids to drop a retried publish.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(300);

/// Why the cluster link failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// A setting is unusable.
    #[error("cluster.{key}: {reason}")]
    Invalid {
        /// The key under `[cluster]`.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The NATS connection could not be set up.
    #[error("cannot connect to NATS at {url}: {detail}")]
    Connect {
        /// The server.
        url: String,
        /// Why.
        detail: String,
    },
    /// JetStream refused or did not answer.
    #[error("JetStream stream `{stream}`: {detail}")]
    Stream {
        /// The stream.
        stream: String,
        /// Why.
        detail: String,
    },
    /// The outbox on disk failed.
    #[error("cluster outbox {path}: {detail}")]
    Outbox {
        /// Its directory.
        path: String,
        /// Why.
        detail: String,
    },
}

/// Is `s` usable as one token of a subject and as a stream name?
pub fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl ClusterSettings {
    /// Checks the names (before anything connects).
    pub fn validate(&self) -> Result<(), ClusterError> {
        let token = |key, v: &str| {
            if valid_token(v) {
                Ok(())
            } else {
                Err(ClusterError::Invalid {
                    key,
                    reason: format!(
                        "{v:?} must be 1–64 letters, digits, `-` or `_` (it is part of a NATS subject)"
                    ),
                })
            }
        };
        token("node", &self.node)?;
        token("stream", &self.stream)?;
        if self.nats_url.trim().is_empty() {
            return Err(ClusterError::Invalid {
                key: "nats_url",
                reason: "must name the NATS server, e.g. nats://127.0.0.1:4222".into(),
            });
        }
        Ok(())
    }

    /// The subject of an event of this node.
    pub fn subject(&self, event_type: &str) -> String {
        format!("{SUBJECT_PREFIX}.{}.{event_type}", self.node)
    }

    fn stream_config(&self) -> async_nats::jetstream::stream::Config {
        async_nats::jetstream::stream::Config {
            name: self.stream.clone(),
            // Exactly three tokens: `coda.<node>.<type>`; audio subjects have more and
            // stay off the stream.
            subjects: vec![format!("{SUBJECT_PREFIX}.*.*")],
            max_messages: self.max_events,
            max_age: self.max_age,
            duplicate_window: DUPLICATE_WINDOW,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        }
    }
}

/// A connection to NATS shared by the bridge and the cluster views.
#[derive(Clone)]
pub struct Cluster {
    settings: std::sync::Arc<ClusterSettings>,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.settings.node)
            .field("stream", &self.settings.stream)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts connecting (in the background: a NATS that is down now is retried, and
    /// events wait in the outbox meanwhile). Must run inside a tokio runtime.
    pub async fn connect(settings: ClusterSettings) -> Result<Cluster, ClusterError> {
        settings.validate()?;
        let url = settings.nats_url.clone();
        let node = settings.node.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("coda/{node}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            // Back within a second of NATS returning (the default backs off to seconds).
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((25u64 << attempts.min(6)).min(1000))
            })
            .event_callback(move |e| {
                let node = node.clone();
                async move {
                    match e {
                        async_nats::Event::Connected => {
                            tracing::info!(node = %node, "connected to NATS")
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(node = %node, "lost NATS; events wait in the outbox")
                        }
                        other => tracing::debug!(node = %node, event = %other, "NATS"),
                    }
                }
            })
            .connect(url.as_str())
            .await
            .map_err(|e| ClusterError::Connect {
                url: url.clone(),
                detail: e.to_string(),
            })?;
        let js = async_nats::jetstream::new(client.clone());
        Ok(Cluster {
            settings: std::sync::Arc::new(settings),
            client,
            js,
        })
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// Creates the stream, or brings an existing one to this node's retention.
    async fn ensure_stream(&self) -> Result<(), ClusterError> {
        self.js
            .create_or_update_stream(self.settings.stream_config())
            .await
            .map(drop)
            .map_err(|e| self.stream_err(e))
    }

    fn stream_err(&self, e: impl std::fmt::Display) -> ClusterError {
        ClusterError::Stream {
            stream: self.settings.stream.clone(),
            detail: e.to_string(),
        }
    }
}
