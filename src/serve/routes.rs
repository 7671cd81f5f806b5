//! The HTTP routes: request checks and limits, the hand-off to the engine's
//! thread, and the answers, whole or streamed as server-sent events.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::api::{
    ApiError, ChatChoice, ChatCompletion, ChatContent, ChatRequest, Completion, CompletionChoice,
    CompletionRequest, Sampling, Usage,
};
use super::metrics::Metrics;
use super::steering::{parse_steer, Catalog};
use super::worker::{Command, Event, Job, Limits, Prompt};
use crate::model::SamplingConfig;

/// Everything the handlers share.
pub struct ServerState {
    pub commands: Sender<Command>,
    pub catalog: Catalog,
    pub model_name: String,
    pub api_key: Option<String>,
    pub limits: Limits,
    /// Requests running or waiting, at most.
    pub max_in_flight: usize,
    pub max_body_bytes: usize,
    pub metrics: Arc<Metrics>,
    pub in_flight: AtomicUsize,
    /// Set by SIGTERM: new requests are refused.
    pub draining: AtomicBool,
    pub started: u64,
    pub next_id: AtomicU64,
}

type AppState = Arc<ServerState>;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/steers", get(steers))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Counts a request in flight for as long as it lives.
struct InFlight(AppState);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The checks every generation request passes first: draining, the API key,
/// the in-flight limit, the body size; then the body parsed as `T` and as the
/// shared [`Sampling`] fields, with the path of a wrong field named.
async fn accept<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<((T, Sampling), InFlight), ApiError> {
    if state.draining.load(Ordering::SeqCst) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        ));
    }
    authorize(state, headers)?;
    let in_flight = state.in_flight.fetch_add(1, Ordering::SeqCst);
    let guard = InFlight(state.clone());
    if in_flight >= state.max_in_flight {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "the server is full: {} requests are running or waiting (--max-concurrent plus --max-queue); retry later",
                state.max_in_flight
            ),
        ));
    }
    let bytes = to_bytes(body, state.max_body_bytes).await.map_err(|_| {
        let limit = state.max_body_bytes;
        ApiError::bad(
            "body",
            format!("the request body exceeds {limit} bytes (--max-body-bytes)"),
        )
    })?;
    let body: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad("body", format!("not JSON: {e}")))?;
    Ok(((typed(&body)?, typed(&body)?), guard))
}

/// `body` read as `T`, a wrong field named by its path.
fn typed<T: DeserializeOwned>(body: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." {
            "body".to_string()
        } else {
            path
        };
        ApiError::bad(&param, e.inner().to_string())
    })
}

fn authorize(state: &ServerState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing or wrong API key: send `Authorization: Bearer <key>`",
        ))
    }
}

/// A job for the engine from a request's prompt and checked settings, the
/// receiver of its events, and whether the answer streams.
fn prepare(
    state: &ServerState,
    prompt: Prompt,
    s: Sampling,
    default_max_tokens: usize,
) -> Result<(Job, mpsc::UnboundedReceiver<Event>, bool), ApiError> {
    if let Some(model) = s.model.as_deref().filter(|m| *m != state.model_name) {
        return Err(ApiError {
            param: Some("model".into()),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "model `{model}` is not served here; this server serves `{}`",
                    state.model_name
                ),
            )
        });
    }
    if s.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad("n", "only n = 1 is supported"));
    }
    let (param, max_tokens) = match (s.max_completion_tokens, s.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", m),
        (None, Some(m)) => ("max_tokens", m),
        (None, None) => (
            "max_tokens",
            default_max_tokens.min(state.limits.max_tokens),
        ),
    };
    if max_tokens == 0 || max_tokens > state.limits.max_tokens {
        return Err(ApiError::bad(
            param,
            format!(
                "must be between 1 and {} (--max-tokens)",
                state.limits.max_tokens
            ),
        ));
    }
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad("temperature", "must be between 0 and 2"));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad("top_p", "must be in (0, 1]"));
    }
    let stop = s.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::bad("stop", "at most 4 non-empty strings"));
    }
    let seed = s.seed.unwrap_or_else(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        nanos ^ state.next_id.load(Ordering::Relaxed).rotate_left(32)
    });
    let sampling = SamplingConfig {
        temperature,
        top_k: 0,
        top_p,
        seed,
    };
    let steer = parse_steer(&state.catalog, s.steer.as_ref()).map_err(ApiError::field)?;
    let (events, receiver) = mpsc::unbounded_channel();
    let job = Job {
        prompt,
        max_tokens,
        sampling,
        stop,
        steer,
        default_steer: s.default_steer.unwrap_or(true),
        ignore_eos: s.ignore_eos,
        events,
        arrived: Instant::now(),
    };
    Ok((job, receiver, s.stream))
}

/// Sends the job to the engine and waits until its prompt has run: the
/// prompt's token count, or the error to answer with.
async fn start(
    state: &ServerState,
    job: Job,
    events: &mut mpsc::UnboundedReceiver<Event>,
) -> Result<usize, ApiError> {
    let gone = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the engine has stopped",
        )
    };
    state
        .commands
        .send(Command::Submit(job))
        .map_err(|_| gone())?;
    match events.recv().await {
        Some(Event::Started { prompt_tokens }) => Ok(prompt_tokens),
        Some(Event::Failed(e)) => Err(ApiError::field(e)),
        Some(Event::Error(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            e,
        )),
        Some(Event::Done { finish_reason, .. }) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!("the request was {finish_reason} before it started"),
        )),
        Some(Event::Text(_)) | None => Err(gone()),
    }
}

/// The whole text and how it ended.
async fn collect(
    events: &mut mpsc::UnboundedReceiver<Event>,
) -> Result<(String, &'static str, usize), ApiError> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(piece) => text.push_str(&piece),
            Event::Done {
                finish_reason,
                completion_tokens,
            } => return Ok((text, finish_reason, completion_tokens)),
            Event::Error(e) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    e,
                ))
            }
            Event::Started { .. } | Event::Failed(_) => {}
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "the engine has stopped",
    ))
}

/// Streams `events` as server-sent events, each piece of text made into a
/// chunk by `chunk(text, finish_reason)`, then the usage when asked (with the
/// prompt's token count), then `[DONE]`. When the client
/// leaves, the stream is dropped, and with it the job's receiver, which the
/// engine notices before its next step.
fn sse(
    mut events: mpsc::UnboundedReceiver<Event>,
    first: Option<Value>,
    chunk: impl Fn(Option<String>, Option<&'static str>) -> Value + Send + 'static,
    usage: Option<usize>,
    guard: InFlight,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<SseEvent, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        let _guard = guard;
        let send = |v: Value| SseEvent::default().data(v.to_string());
        if let Some(first) = first {
            if tx.send(Ok(send(first))).await.is_err() {
                return;
            }
        }
        while let Some(event) = events.recv().await {
            let (out, last) = match event {
                Event::Text(piece) => (send(chunk(Some(piece), None)), false),
                Event::Done {
                    finish_reason,
                    completion_tokens,
                } => {
                    if tx
                        .send(Ok(send(chunk(None, Some(finish_reason)))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    // `stream_options.include_usage`: one more chunk, with
                    // no choices and the usage.
                    let Some(prompt_tokens) = usage else { break };
                    let mut last = chunk(None, None);
                    last["choices"] = json!([]);
                    last["usage"] = json!(Usage::new(prompt_tokens, completion_tokens));
                    (send(last), true)
                }
                Event::Error(e) => (
                    send(json!({"error": {"message": e, "type": "server_error"}})),
                    true,
                ),
                Event::Started { .. } | Event::Failed(_) => continue,
            };
            if tx.send(Ok(out)).await.is_err() {
                return;
            }
            if last {
                break;
            }
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn id(state: &ServerState, prefix: &str) -> String {
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{n:06}", state.started)
}

async fn completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let response = completion(&state, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    state
        .metrics
        .responded("/v1/completions", response.status().as_u16());
    response
}

async fn completion(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ((request, sampling), guard): ((CompletionRequest, _), _) =
        accept(state, headers, body).await?;
    let prompt = match &request.prompt {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_string()
        }
        _ => {
            return Err(ApiError::bad(
                "prompt",
                "must be a string (or a list of one string)",
            ))
        }
    };
    let include_usage = sampling.include_usage();
    let (job, mut events, stream) = prepare(state, Prompt::Text(prompt), sampling, 16)?;
    let prompt_tokens = start(state, job, &mut events).await?;
    let (id, created, model) = (id(state, "cmpl"), now_seconds(), state.model_name.clone());
    let make = move |text: Option<String>, finish: Option<&'static str>, usage: Option<Usage>| {
        Completion {
            id: id.clone(),
            object: "text_completion",
            created,
            model: model.clone(),
            choices: vec![CompletionChoice {
                index: 0,
                text: text.unwrap_or_default(),
                logprobs: None,
                finish_reason: finish,
            }],
            usage,
        }
    };
    if stream {
        let chunk = move |text, finish| {
            serde_json::to_value(make(text, finish, None)).unwrap_or(Value::Null)
        };
        let usage = include_usage.then_some(prompt_tokens);
        return Ok(sse(events, None, chunk, usage, guard));
    }
    let (text, finish, completion_tokens) = collect(&mut events).await?;
    drop(guard);
    Ok(Json(make(
        Some(text),
        Some(finish),
        Some(Usage::new(prompt_tokens, completion_tokens)),
    ))
    .into_response())
}

async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = chat(&state, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    state
        .metrics
        .responded("/v1/chat/completions", response.status().as_u16());
    response
}

async fn chat(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let ((request, sampling), guard): ((ChatRequest, _), _) = accept(state, headers, body).await?;
    if request.messages.is_empty() {
        return Err(ApiError::bad("messages", "must hold at least one message"));
    }
    for (i, m) in request.messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(ApiError::bad(
                &format!("messages[{i}].role"),
                format!("`{}` is not system, user or assistant", m.role),
            ));
        }
    }
    let turns = request
        .messages
        .into_iter()
        .map(|m| (m.role, m.content))
        .collect();
    let default_max = state.limits.max_tokens;
    let include_usage = sampling.include_usage();
    let (job, mut events, stream) = prepare(state, Prompt::Chat(turns), sampling, default_max)?;
    let prompt_tokens = start(state, job, &mut events).await?;
    let (id, created, model) = (
        id(state, "chatcmpl"),
        now_seconds(),
        state.model_name.clone(),
    );
    let make =
        move |object, message: Option<ChatContent>, delta: Option<ChatContent>, finish, usage| {
            ChatCompletion {
                id: id.clone(),
                object,
                created,
                model: model.clone(),
                choices: vec![ChatChoice {
                    index: 0,
                    message,
                    delta,
                    logprobs: None,
                    finish_reason: finish,
                }],
                usage,
            }
        };
    if stream {
        let role = ChatContent {
            role: Some("assistant"),
            content: Some(String::new()),
        };
        let first =
            serde_json::to_value(make("chat.completion.chunk", None, Some(role), None, None)).ok();
        let chunk = move |text: Option<String>, finish| {
            let delta = ChatContent {
                role: None,
                content: text,
            };
            serde_json::to_value(make(
                "chat.completion.chunk",
                None,
                Some(delta),
                finish,
                None,
            ))
            .unwrap_or(Value::Null)
        };
        let usage = include_usage.then_some(prompt_tokens);
        return Ok(sse(events, first, chunk, usage, guard));
    }
    let (text, finish, completion_tokens) = collect(&mut events).await?;
    drop(guard);
    let message = ChatContent {
        role: Some("assistant"),
        content: Some(text),
    };
    let usage = Usage::new(prompt_tokens, completion_tokens);
    Ok(Json(make(
        "chat.completion",
        Some(message),
        None,
        Some(finish),
        Some(usage),
    ))
    .into_response())
}

async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_name,
            "object": "model",
            "created": state.started,
            "owned_by": "saescope",
            "max_model_len": state.limits.max_prompt_tokens + state.limits.max_tokens,
        }],
    }))
    .into_response()
}

async fn steers(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    Json(json!({
        "object": "list",
        "data": state.catalog.steers,
        "saes": state.catalog.saes,
    }))
    .into_response()
}

async fn health(State(state): State<AppState>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting down"})),
        )
            .into_response()
    } else {
        Json(json!({"status": "ok"})).into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
