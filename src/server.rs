//! `coda serve`: wires the hub, the store, authentication and the HTTP/WebSocket server
//! together, and shuts them down in order on SIGINT/SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use coda_actors::auth::{Authenticator, BootToken, TokenStore};
use coda_actors::components::ComponentRegistry;
use coda_actors::hub::{EventHub, GetStatus, HubHandle, Shutdown};
use coda_actors::kernel::{Kernel, KernelSettings, Rooms};
use coda_actors::llm::actor::ProviderSlot;
use coda_actors::metrics::{GetPerformance, MetricsActor, RenderPrometheus};
use coda_actors::orchestrator::ConversationSettings;
use coda_actors::session::guard::{echo, GuardPolicy};
use coda_actors::session::upgrade::{ws_upgrade, UpgradeState};
use coda_actors::session::{ServerFacts, SessionShared};
use coda_actors::store::{SledStore, Storage, StoreError};
use coda_actors::tts::espeak::{EspeakConfig, EspeakEngine};
use coda_protocol::{ComponentState, ConnectionState, PROTOCOL_VERSION};

use crate::config::{Loaded, Settings};
use crate::synthetic::{self, SyntheticOptions};

/// Why `coda serve` could not start. Each maps to an exit code in `main`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Non-loopback bind without auth.
    #[error("refusing to listen on {host}: binding a non-loopback address requires token auth.\n  Turn it on with `--auth` (or auth.required = true / CODA__AUTH__REQUIRED=true), create a token with `coda token create NAME`, or bind 127.0.0.1.")]
    InsecureBind { host: String },
    /// Another server holds the store.
    #[error("{0}\n  Is `coda serve` already running? Stop it, or point this one at another store with --config / CODA__STORAGE__PATH.")]
    StoreLocked(StoreError),
    /// Other store problems.
    #[error("cannot open the store: {0}")]
    Store(StoreError),
    /// Bind failure.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl StartError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::InsecureBind { .. } => 2,
            StartError::StoreLocked(_) => 3,
            _ => 1,
        }
    }
}

/// Connects to NATS (in the background) and starts the hub → JetStream bridge, when
/// `[cluster]` is configured.
pub(crate) async fn start_cluster(
    s: &Settings,
    hub: &coda_actors::hub::HubHandle,
) -> Result<Option<coda_actors::cluster::Cluster>, StartError> {
    use coda_actors::cluster::{Bridge, Cluster, Outbox};
    let Some(cs) = s.cluster_settings() else {
        return Ok(None);
    };
    let outbox = Outbox::open(&cs.outbox_dir, cs.outbox_max_events)
        .map_err(|e| StartError::Other(e.into()))?;
    tracing::info!(url = %cs.nats_url, node = %cs.node, stream = %cs.stream, "joining the cluster");
    let cluster = Cluster::connect(cs)
        .await
        .map_err(|e| StartError::Other(e.into()))?;
    Bridge::start(cluster.clone(), hub.clone(), outbox);
    Ok(Some(cluster))
}

/// Starts the Wyoming server when `wyoming.enabled` (the address was checked with the
/// config).
fn start_wyoming(
    s: &Settings,
    hub: &HubHandle,
    kernel: &coda_actors::kernel::Kernel,
    components: &ComponentRegistry,
) -> Result<(), StartError> {
    use coda_actors::wyoming::{serve, TurnAnswers, WyomingServices, WyomingSettings};
    let w = &s.wyoming;
    if !w.enabled {
        return Ok(());
    }
    let addr = format!("{}:{}", w.host, w.port);
    let bind_err = |source| StartError::Bind {
        addr: addr.clone(),
        source,
    };
    let listener =
        std::net::TcpListener::bind((w.host.trim_start_matches('[').trim_end_matches(']'), w.port))
            .map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(bind_err)?;
    let tts = match coda_actors::tts::registry::build(&s.tts_settings(), None) {
        Ok(engine) => Some(engine),
        Err(e) => {
            tracing::warn!(error = %e, "wyoming: no text-to-speech to offer");
            None
        }
    };
    let services = WyomingServices {
        stt: Some(kernel.stt.clone().recipient()),
        tts,
        kernel: coda_actors::kernel::KernelHandle::new(Some(kernel.clone())),
        answers: TurnAnswers::start(hub),
        wake_word: kernel
            .wake
            .is_some()
            .then(|| s.wake.word.trim().to_string()),
    };
    let settings = WyomingSettings {
        max_connections: w.max_connections,
        max_audio_s: s.stt.max_utterance_s,
        stt_model: s.stt.model.clone(),
        language: s.stt.language.clone(),
        tts_voice: s.tts.engine.to_string(),
        ..WyomingSettings::default()
    };
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, "wyoming server listening");
    }
    actix_rt::spawn(serve(listener, settings, services));
    components.set(hub, "wyoming", ComponentState::Running, None);
    Ok(())
}

/// Is `host` a loopback address (or `localhost`)?
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim().trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// A server that is up: where it listens, and handles to stop it.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The hub (publish events into the running server).
    pub hub: HubHandle,
    /// Stops the HTTP server.
    pub http: actix_web::dev::ServerHandle,
    /// Where the per-boot token was written.
    pub token_file: PathBuf,
    /// The per-boot token (the CLI's own clients use it).
    pub boot_token: String,
    /// The metrics actor (the OpenTelemetry export reads it).
    pub metrics: actix::Addr<MetricsActor>,
    server: actix_web::dev::Server,
    store: Arc<SledStore>,
    grace: Duration,
    mcp: Vec<actix::Addr<coda_actors::mcp::McpServerActor>>,
}

/// Starts everything (must be called inside an actix `System`).
pub async fn start(
    loaded: &Loaded,
    synthetic: Option<SyntheticOptions>,
) -> Result<Running, StartError> {
    let s = &loaded.settings;
    if !is_loopback_host(&s.server.host) && !s.auth.required {
        return Err(StartError::InsecureBind {
            host: s.server.host.clone(),
        });
    }

    let store_dir = s.storage_dir();
    let store = match SledStore::open(&store_dir) {
        Ok(st) => Arc::new(st),
        Err(e @ StoreError::Locked { .. }) => return Err(StartError::StoreLocked(e)),
        Err(e) => return Err(StartError::Store(e)),
    };
    let storage: Arc<dyn Storage> = store.clone();
    let boot = BootToken::generate();
    let boot_secret = boot.expose_secret().to_string();
    let authenticator = Arc::new(Authenticator::new(
        boot,
        Some(TokenStore::new(storage.clone())),
    ));

    let hub = EventHub::start_hub(s.hub_settings());
    // Before anything publishes, so the cluster stream has this node's events from seq 1.
    let cluster = start_cluster(s, &hub).await?;
    let components = ComponentRegistry::new();
    components.set(&hub, "event_hub", ComponentState::Running, None);
    components.set(&hub, "store", ComponentState::Running, None);
    components.set(&hub, "server", ComponentState::Starting, None);

    let facts = ServerFacts {
        started_at: coda_actors::hub::unix_now(),
        started: Instant::now(),
        listen: None,
        config: loaded.redacted_json(),
        profile: loaded.profile.clone(),
        components: components.clone(),
    };

    // The port is only known after binding (port 0), and the guard needs it: bind a
    // std listener first.
    let bind_addr = format!("{}:{}", s.server.host, s.server.port);
    let listener = std::net::TcpListener::bind((
        s.server.host.trim_start_matches('[').trim_end_matches(']'),
        s.server.port,
    ))
    .map_err(|source| StartError::Bind {
        addr: bind_addr.clone(),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: bind_addr.clone(),
        source,
    })?;
    let facts = ServerFacts {
        listen: Some(addr.to_string()),
        ..facts
    };
    let (rooms, registry) = start_rooms(s, storage, &hub, &components)?;
    let mcp = start_mcp(s, &registry, &hub)?;
    let llm = llm_provider(s, &hub, cluster.as_ref());
    let mcp_http = s.mcp.serve.http.then(|| {
        web::Data::new(coda_actors::mcp::server::HttpEndpoint::new(
            coda_actors::mcp::server::CodaMcpServer::new(
                registry.clone(),
                llm.clone().ok(),
                s.mcp.serve.allow_ask,
            ),
        ))
    });
    let kernel = start_kernel(s, &hub, &components, rooms, llm.clone());
    start_wyoming(s, &hub, &kernel, &components)?;
    if let Some(c) = &cluster {
        coda_actors::cluster::satellite::SatelliteGateway::start(
            c.clone(),
            hub.clone(),
            kernel.stt.clone().recipient(),
            kernel.hands.follow_ups.clone(),
        );
        if s.cluster.llm_pool {
            join_llm_pool(s, c, &llm, &hub, &components);
        }
    }
    listen_on_device(s, &kernel);
    let shared = SessionShared::new(
        s.session_settings(),
        hub.clone(),
        authenticator,
        facts,
        Some(kernel),
    );
    let metrics_settings = s.metrics_settings()?;
    let metrics = actix::Supervisor::start({
        let (hub, components) = (hub.clone(), components.clone());
        // Registers itself as component "metrics" (running) once started.
        move |_| MetricsActor::new(hub, metrics_settings, components)
    });
    // A first answer means `started()` ran: its `component_status` is queued at the hub
    // ahead of the server's own `running` below, which stays the last startup event.
    if let Err(e) = metrics.send(GetPerformance).await {
        tracing::warn!(error = %e, "metrics actor did not start");
    }
    shared.set_metrics(metrics.clone());
    if let Some(c) = cluster {
        components.set(&hub, "cluster", ComponentState::Running, None);
        shared.set_cluster(c);
    }
    let guard = GuardPolicy::new(
        &s.server.host,
        addr.port(),
        &s.server.allowed_hosts,
        &s.server.allowed_origins,
    );
    let state = web::Data::new(UpgradeState {
        shared: shared.clone(),
        guard,
    });

    let workers = if s.server.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        s.server.workers
    };
    let grace = Settings::secs(s.server.shutdown_grace_s);
    // Written before the first connection is accepted, so a CLI never reads the token of
    // an earlier server on this port.
    let token_file = s.token_file(addr.port());
    let boot_for_file = BootToken::from_secret(boot_secret.clone());
    if let Err(e) = boot_for_file.write(&token_file) {
        tracing::warn!(path = %token_file.display(), error = %e, "cannot write the per-boot token file; local CLI clients will need a token");
    }

    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(host_guard))
            .route("/ws", web::get().to(ws_upgrade))
            .route("/", web::get().to(index))
            .route(
                "/dashboard/{path:.*}",
                web::get().to(crate::dashboard::asset),
            )
            .route("/healthz", web::get().to(healthz))
            .route("/metrics", web::get().to(prometheus_metrics))
            .route("/api/system_info", web::get().to(api_system_info))
            .route("/api/config", web::get().to(api_config))
            .configure(|cfg| {
                if let Some(endpoint) = &mcp_http {
                    cfg.app_data(endpoint.clone())
                        .route("/mcp", web::route().to(mcp_endpoint));
                }
            })
            .default_service(web::to(not_found))
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(grace.as_secs().max(1))
    // Small frames must not wait for the client's delayed ACK (Nagle).
    .tcp_nodelay(true)
    // Close the TCP connection right after a WebSocket close handshake (RFC 6455: the
    // server closes first) instead of lingering; every endpoint is a GET, so there is
    // no unread request body to protect.
    .client_disconnect_timeout(Duration::ZERO)
    .listen(listener)
    .map_err(|source| StartError::Bind {
        addr: bind_addr.clone(),
        source,
    })?
    .run();
    let http = server.handle();

    components.set(&hub, "server", ComponentState::Running, None);
    tracing::info!(%addr, auth_required = s.auth.required, store = %store_dir.display(), "coda serve listening on ws://{addr}/ws");

    if let Some(opts) = synthetic {
        actix_rt::spawn(synthetic::run(hub.clone(), opts));
    }

    Ok(Running {
        addr,
        hub,
        http,
        token_file,
        boot_token: boot_secret,
        metrics,
        server,
        store,
        grace,
        mcp,
    })
}

impl Running {
    /// Runs until SIGINT/SIGTERM (or `http.stop`), then shuts down in order: clients told
    /// (close 1001), HTTP stopped, store flushed, token file removed.
    pub async fn serve_until_signal(self) -> anyhow::Result<()> {
        let hub = self.hub.clone();
        let http = self.http.clone();
        let grace = self.grace;
        actix_rt::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            shutdown(&hub, &http, grace).await;
        });
        self.finish().await
    }

    /// Waits for the HTTP server to stop, then flushes and cleans up.
    pub async fn finish(self) -> anyhow::Result<()> {
        let result = self.server.await;
        // The MCP servers' programs go with us.
        for m in &self.mcp {
            let _ = m.send(coda_actors::mcp::actor::StopMcp).await;
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "store flush failed at shutdown");
        }
        let _ = BootToken::remove(&self.token_file);
        tracing::info!("stopped");
        result.map_err(anyhow::Error::from)
    }
}

/// Tells every client, waits (up to `grace`) for them to go, then stops HTTP.
pub async fn shutdown(hub: &HubHandle, http: &actix_web::dev::ServerHandle, grace: Duration) {
    let _ = hub
        .addr()
        .send(Shutdown {
            reason: "server shutting down".into(),
        })
        .await;
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match hub.addr().send(GetStatus).await {
            Ok(st) if st.clients > 0 => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => break,
        }
    }
    http.stop(true).await;
}

pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The language model named by config (`[llm]`), with its fallback chain; fallbacks
/// are announced as events through the hub. The `pool` provider asks through `cluster`.
pub fn llm_provider(
    s: &Settings,
    hub: &HubHandle,
    cluster: Option<&coda_actors::cluster::Cluster>,
) -> ProviderSlot {
    let mut settings = crate::llm_setup::llm_settings(&s.llm, None);
    // The node's own NATS connection rather than one more.
    if let (Some(c), Some(link)) = (cluster, &settings.pool) {
        settings.pool = Some(coda_actors::cluster::pool::PoolLink::of(
            c,
            link.settings().clone(),
        ));
    }
    coda_actors::llm::registry::build(&settings, Some(hub.clone()), None)
        .map(|chain| Arc::new(chain) as Arc<dyn coda_actors::llm::LlmProvider>)
}

/// `cluster.llm_pool`: answers other nodes' LLM requests with this node's own provider
/// (the same chain its turns use). Without a usable provider it stays out of the pool,
/// so other nodes' requests go to members that can answer.
fn join_llm_pool(
    s: &Settings,
    cluster: &coda_actors::cluster::Cluster,
    llm: &ProviderSlot,
    hub: &HubHandle,
    components: &ComponentRegistry,
) {
    match llm {
        Ok(provider) => {
            // Detached: they serve for the life of the process.
            drop(coda_actors::cluster::pool::serve(
                cluster,
                provider.clone(),
                s.cluster.llm_pool_capacity,
            ));
            components.set(hub, "llm_pool", ComponentState::Running, None);
        }
        Err(e) => {
            tracing::warn!(error = %e, "cluster.llm_pool: not joining the LLM pool: this node has no usable provider");
            components.set(
                hub,
                "llm_pool",
                ComponentState::Degraded,
                Some(format!("not in the LLM pool: {e}")),
            );
        }
    }
}

/// Memory (on the same store) and Tools, which the kernel uses.
fn start_rooms(
    s: &Settings,
    storage: Arc<dyn Storage>,
    hub: &HubHandle,
    components: &ComponentRegistry,
) -> Result<(Rooms, Arc<coda_actors::tools::ToolRegistry>), StartError> {
    use actix::{Actor, Supervisor};
    use coda_actors::memory::{MemoryActor, MemoryEngine};
    use coda_actors::tools::{register_builtins, BuiltinDeps, ToolRegistry, ToolsActor};
    let engine = MemoryEngine::open(storage, s.memory.engine_settings())
        .map_err(|e| StartError::Other(anyhow::anyhow!("cannot open the memory store: {e}")))?;
    // Memory and Tools start before the kernel (the tools use memory) but under the same
    // restart budget as the kernel's actors.
    let sup = |name| {
        coda_actors::supervise::Supervision::starting(name, s.restart_budget(), hub, components)
    };
    let actor = MemoryActor::new(Arc::new(engine), Some(hub.clone()))
        .map_err(|e| StartError::Other(anyhow::anyhow!("cannot start the memory writer: {e}")))?
        .supervised(sup("memory"));
    let memory = Supervisor::start(move |_| actor);

    let timers =
        coda_actors::tools::builtin::timer::TimerService::new(Some(hub.clone()), None).start();
    let mut registry = ToolRegistry::new(s.tools.registry_settings());
    let project = coda_actors::tools::Workspace::open(s.tools.workspace_settings())
        .map_err(|e| StartError::Other(anyhow::anyhow!("tools.project_root: {e}")))?;
    let shell = s
        .tools
        .shell_settings()
        .map_err(|e| StartError::Other(e.into()))?;
    register_builtins(
        &mut registry,
        BuiltinDeps {
            memory: Some(memory.clone()),
            components: Some(components.clone()),
            timers: Some(timers.clone()),
            project: Some(Arc::new(project)),
            shell: Some(shell),
            map_cache: Some(crate::llm_setup::cache_dir().join("repomap")),
        },
    )
    .map_err(|e| StartError::Other(anyhow::anyhow!("cannot register the built-in tools: {e}")))?;
    registry
        .set_permissions(&s.tools.permissions)
        .map_err(|e| StartError::Other(anyhow::anyhow!("tools.permissions: {e}")))?;
    let registry = Arc::new(registry);
    let tools_actor =
        ToolsActor::shared(registry.clone(), Some(hub.clone())).supervised(sup("tools"));
    let tools = Supervisor::start(move |_| tools_actor);
    let rooms = Rooms {
        memory: Some(memory),
        tools: Some(tools),
        matcher: None,
        // The kernel wires its own: AudioCapture (when `audio.enabled`) takes
        // `stt_start {source:"device"}` and reports speech to the Stt actor.
        device_audio: None,
        speech: None,
        timers: Some(timers),
    };
    Ok((rooms, registry))
}

/// One `McpServerActor` per configured MCP server: their tools join the registry as they
/// connect (`mcp_status` says so), and go when they stop.
fn start_mcp(
    s: &Settings,
    registry: &Arc<coda_actors::tools::ToolRegistry>,
    hub: &HubHandle,
) -> Result<Vec<actix::Addr<coda_actors::mcp::McpServerActor>>, StartError> {
    use coda_actors::mcp::McpServerActor;
    let servers = s
        .mcp
        .server_settings(&s.tools.project_root(), &s.tools)
        .map_err(|e| StartError::Other(e.into()))?;
    Ok(servers
        .into_iter()
        .map(|settings| {
            let actor = McpServerActor::new(
                settings,
                registry.clone(),
                Some(hub.clone()),
                s.restart_budget(),
            );
            actix::Supervisor::start(move |_| actor)
        })
        .collect())
}

/// `audio.listen`: the server listens on its own input device from the start, as the
/// session `device` (a failure is logged; the server serves on without it).
fn listen_on_device(s: &Settings, kernel: &Kernel) {
    use crate::config::ListenMode;
    let mode = match s.audio.listen {
        ListenMode::Off => return,
        ListenMode::Wake => coda_protocol::SttMode::Wake,
        ListenMode::Continuous => coda_protocol::SttMode::Continuous,
    };
    let Some(device) = kernel.device_audio.clone() else {
        tracing::warn!("audio.listen is set but audio capture is off (audio.enabled = false)");
        return;
    };
    let hands = kernel.hands.clone();
    actix_rt::spawn(async move {
        // A wake listening needs the reference loaded (built on the first start).
        if mode == coda_protocol::SttMode::Wake {
            hands.wake.loaded(std::time::Duration::from_secs(60)).await;
        }
        let start = coda_actors::voice::DeviceListen::Start {
            session_id: DEVICE_SESSION.into(),
            mode,
        };
        match device.send(start).await {
            Ok(Ok(())) => {
                tracing::info!(%mode, session = DEVICE_SESSION, "listening on the input device (audio.listen)")
            }
            Ok(Err(why)) => tracing::warn!(%why, "audio.listen: cannot listen on the input device"),
            Err(e) => tracing::warn!(error = %e, "audio.listen: audio capture is not running"),
        }
    });
}

/// The conversation session of what the server hears on its own device (`audio.listen`).
pub const DEVICE_SESSION: &str = "device";

fn start_kernel(
    s: &Settings,
    hub: &HubHandle,
    components: &ComponentRegistry,
    rooms: Rooms,
    llm: ProviderSlot,
) -> Kernel {
    let settings = KernelSettings {
        budget: s.restart_budget(),
        conversation: ConversationSettings {
            system_prompt: s.conversation.system_prompt.clone(),
            history_turns: s.conversation.history_turns,
            max_tokens: (s.conversation.max_tokens > 0).then_some(s.conversation.max_tokens),
            speak_first_clause: s.conversation.speak_first_clause,
            max_sessions: s.conversation.max_sessions,
            max_turns_in_flight: s.conversation.max_turns_in_flight,
            follow_up: crate::config::Settings::secs(s.conversation.follow_up_s),
            barge_in: s.audio.barge_in,
            hold_max: coda_actors::orchestrator::HOLD_MAX,
            llm_tools: s.conversation.llm_tools,
            max_tool_rounds: s.conversation.max_tool_rounds,
        },
        stt: s.stt_settings(),
        tts_output: s.tts_output(),
        audio: s.audio.enabled.then(|| s.audio_settings()),
        wake: Some(s.wake_settings()),
        prices: s.prices(),
    };
    let engine = crate::speech::tts_engine(s, None, None).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "speech engine not usable; speaking with espeak-ng");
        Arc::new(EspeakEngine::new(EspeakConfig {
            binary: PathBuf::from(&s.tts.binary),
            voice: s.tts.voice.clone(),
            rate: s.tts.rate,
        }))
    });
    Kernel::start(
        hub.clone(),
        components.clone(),
        settings,
        llm,
        engine,
        rooms,
    )
}

/// Host allow-list on every request (DNS rebinding).
async fn host_guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let hosts: Vec<_> = req.headers().get_all(header::HOST).collect();
    let host = hosts
        .first()
        .map(|h| h.to_str().unwrap_or("\u{fffd}").to_string());
    let allowed = hosts.len() <= 1
        && req
            .app_data::<web::Data<UpgradeState>>()
            .map(|st| st.guard.host_allowed(host.as_deref()))
            .unwrap_or(false);
    if allowed {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let peer = req
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    let (status, reason) = if hosts.len() > 1 {
        (
            actix_web::http::StatusCode::BAD_REQUEST,
            format!("{} Host headers; a request carries one", hosts.len()),
        )
    } else {
        (
            actix_web::http::StatusCode::FORBIDDEN,
            format!(
                "host `{}` is not allowed (server.allowed_hosts)",
                echo(host.as_deref().unwrap_or(""))
            ),
        )
    };
    tracing::warn!(%peer, %reason, path = %req.path(), "request refused");
    if let Some(st) = req.app_data::<web::Data<UpgradeState>>() {
        st.shared.connection_event(
            "-",
            &peer,
            None,
            ConnectionState::Refused,
            Some(reason.clone()),
        );
    }
    let resp = HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(format!("{reason}\n"));
    Ok(req.into_response(resp).map_into_right_body())
}

async fn index(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<UpgradeState>,
) -> actix_web::Result<HttpResponse> {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if upgrade {
        return ws_upgrade(req, body, state).await;
    }
    Ok(crate::dashboard::index(&req))
}

async fn healthz(state: web::Data<UpgradeState>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "status": "ok",
        "protocol_version": PROTOCOL_VERSION,
        "server_version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.shared.facts.started.elapsed().as_secs_f64(),
    }))
}

/// With auth on, the read-only API wants the same token as the WebSocket.
fn api_refusal(req: &HttpRequest, state: &UpgradeState) -> Option<HttpResponse> {
    if !state.shared.settings.auth_required {
        return None;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(coda_actors::auth::extract_bearer);
    match state.shared.auth.check(token) {
        Ok(_) => None,
        Err(failure) => {
            let peer = req.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let reason = format!("{} refused: {failure}", req.path());
            tracing::warn!(%peer, %reason, "request refused");
            state.shared.connection_event(
                "-",
                &peer,
                None,
                ConnectionState::Refused,
                Some(reason.clone()),
            );
            Some(
                HttpResponse::Unauthorized()
                    .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                    .body(format!("{reason}\n")),
            )
        }
    }
}

async fn api_system_info(req: HttpRequest, state: web::Data<UpgradeState>) -> HttpResponse {
    if let Some(r) = api_refusal(&req, &state) {
        return r;
    }
    let shared = &state.shared;
    match shared.hub.addr().send(GetStatus).await {
        Ok(st) => HttpResponse::Ok().json(shared.system_info(&st)),
        Err(_) => HttpResponse::ServiceUnavailable().body("event hub unavailable\n"),
    }
}

/// `GET /metrics`: Prometheus text format (token required when auth is on, as for `/api`).
async fn prometheus_metrics(req: HttpRequest, state: web::Data<UpgradeState>) -> HttpResponse {
    if let Some(r) = api_refusal(&req, &state) {
        return r;
    }
    let Some(metrics) = state.shared.metrics() else {
        return HttpResponse::ServiceUnavailable().body("metrics are not running\n");
    };
    match metrics.send(RenderPrometheus).await {
        Ok(text) => HttpResponse::Ok()
            .content_type(coda_actors::metrics::prometheus::CONTENT_TYPE)
            .body(text),
        Err(e) => HttpResponse::ServiceUnavailable()
            .body(format!("the metrics component did not answer ({e})\n")),
    }
}

async fn api_config(req: HttpRequest, state: web::Data<UpgradeState>) -> HttpResponse {
    if let Some(r) = api_refusal(&req, &state) {
        return r;
    }
    HttpResponse::Ok().json(serde_json::json!({
        "config": state.shared.facts.config,
        "profile": state.shared.facts.profile,
    }))
}

/// `/mcp`: Coda's tools to MCP clients over streamable HTTP, behind the same token as the
/// API and the WebSocket.
async fn mcp_endpoint(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<UpgradeState>,
    endpoint: web::Data<coda_actors::mcp::server::HttpEndpoint>,
) -> HttpResponse {
    if let Some(r) = api_refusal(&req, &state) {
        return r;
    }
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    let answer = endpoint
        .handle(
            req.method().as_str(),
            &req.uri().to_string(),
            headers,
            bytes::Bytes::from(body.to_vec()),
        )
        .await;
    let status = actix_web::http::StatusCode::from_u16(answer.status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut out = HttpResponse::build(status);
    for (k, v) in answer.headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::try_from(k.as_str()),
            header::HeaderValue::from_bytes(&v),
        ) {
            out.append_header((name, value));
        }
    }
    out.streaming(answer.body)
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound()
        .content_type("text/plain; charset=utf-8")
        .body(format!("no such endpoint: {}\n", req.path()))
}
