//! `saescope serve`: an OpenAI-compatible HTTP server (tokio + axum) over the
//! continuous-batching [`Engine`](crate::model::generate::engine::Engine).
//! The engine, the model and the loaded steers live on one thread of their
//! own (`worker`); the HTTP handlers (`routes`) check requests, apply the
//! limits, and pass jobs to it over a channel. Steering per request, on top
//! of a server-wide default, is described in `steering`.

pub mod api;
pub mod metrics;
mod routes;
pub mod steering;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::generate::engine::{Engine, EngineConfig};
use crate::model::LoadedModel;
use metrics::Metrics;
use routes::ServerState;
use steering::{Catalog, LoadedSteers};
use worker::{Command, Limits};

/// Everything `saescope serve` is told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    /// 0 picks a free port (the address is printed).
    pub port: u16,
    /// The `model` name clients send and `/v1/models` lists.
    pub model_name: String,
    /// When set, `/v1/*` needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Sequences in the running batch.
    pub max_concurrent: usize,
    /// Requests waiting for a place in the batch; more get 429.
    pub max_queue: usize,
    pub max_prompt_tokens: usize,
    pub max_tokens: usize,
    pub max_body_bytes: usize,
    /// How long SIGTERM waits for requests in flight before cancelling them.
    pub shutdown_timeout: Duration,
    /// Intervention files by name.
    pub steers: Vec<(String, PathBuf)>,
    /// SAE folders by name, for inline feature edits.
    pub saes: Vec<(String, PathBuf)>,
    /// Steers (name, scale) every request gets unless it opts out.
    pub default_steers: Vec<(String, f64)>,
    /// A pause after every decode step (tests stretch tiny models with it).
    pub step_pause: Option<Duration>,
}

/// Loads the model (with `load`, on the engine's thread), then serves until
/// SIGTERM or Ctrl-C; `on_listening` hears the bound address.
pub fn serve(
    config: ServeConfig,
    load: impl FnOnce() -> Result<LoadedModel> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    let limits = Limits {
        max_prompt_tokens: config.max_prompt_tokens,
        max_tokens: config.max_tokens,
        step_pause: config.step_pause,
    };
    let (commands, receiver) = mpsc::channel::<Command>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Catalog>>();
    let worker_config = config.clone();
    let worker_metrics = Arc::clone(&metrics);
    let worker = std::thread::Builder::new()
        .name("saescope-engine".into())
        .spawn(move || -> Result<()> {
            let started = (|| {
                let loaded = load()?;
                let cfg = loaded.model.config();
                let shape = (cfg.n_layers, cfg.d_model as usize, loaded.model.device());
                let (steers, catalog) = LoadedSteers::load(
                    &worker_config.steers,
                    &worker_config.saes,
                    &worker_config.default_steers,
                    shape,
                )?;
                Ok((loaded, steers, catalog))
            })();
            let (loaded, steers, catalog) = match started {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let engine_config = EngineConfig {
                max_sequences: worker_config.max_concurrent,
                max_context: limits.max_prompt_tokens + limits.max_tokens,
            };
            let mut engine = match Engine::new(&loaded.model, engine_config) {
                Ok(e) => e,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let _ = ready_tx.send(Ok(catalog));
            worker::work(
                &loaded,
                &steers,
                limits,
                &mut engine,
                &receiver,
                &worker_metrics,
            )
        })
        .map_err(|e| Error::InvalidArgument(format!("cannot start the engine thread: {e}")))?;
    let catalog = ready_rx
        .recv()
        .map_err(|_| Error::InvalidArgument("the engine thread stopped while loading".into()))??;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Error::InvalidArgument(format!("cannot start the async runtime: {e}")))?;
    let state = Arc::new(ServerState {
        commands: commands.clone(),
        catalog,
        model_name: config.model_name.clone(),
        api_key: config.api_key.clone(),
        limits,
        max_in_flight: config.max_concurrent + config.max_queue,
        max_body_bytes: config.max_body_bytes,
        metrics,
        in_flight: AtomicUsize::new(0),
        draining: AtomicBool::new(false),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        next_id: AtomicU64::new(0),
    });
    let served = runtime.block_on(async {
        let address = format!("{}:{}", config.host, config.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|e| Error::InvalidArgument(format!("cannot listen on {address}: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::InvalidArgument(format!("no local address: {e}")))?;
        on_listening(bound);
        let app = routes::router(Arc::clone(&state));
        let shutdown_state = Arc::clone(&state);
        let timeout = config.shutdown_timeout;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                shutdown_state.draining.store(true, Ordering::SeqCst);
                let in_flight = shutdown_state.in_flight.load(Ordering::SeqCst);
                eprintln!(
                    "shutting down: {in_flight} requests in flight get {:.0} s to finish",
                    timeout.as_secs_f64()
                );
                let commands = shutdown_state.commands.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    let _ = commands.send(Command::CancelAll);
                });
            })
            .await
            .map_err(|e| Error::InvalidArgument(format!("the server failed: {e}")))
    });
    // The handlers are gone: the engine thread ends when its channel closes.
    drop(state);
    drop(commands);
    runtime.shutdown_timeout(Duration::from_secs(1));
    let worked = worker
        .join()
        .map_err(|_| Error::InvalidArgument("the engine thread panicked".into()))?;
    served.and(worked)
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
