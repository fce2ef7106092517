//! The loopback HTTP endpoint of `views serve`: `/status` (JSON), `/metrics` (Prometheus' text
//! format) and `/report` (the session's HTML report), over axum. It only reads: the snapshot the
//! serve loop keeps, and the memory read at each request.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use spillway_live::serve::{metrics_text, Memory, Shared, Snapshot};
use std::sync::Arc;

/// Reads the process's memory now.
pub type MemoryProbe = Arc<dyn Fn() -> Memory + Send + Sync>;
/// Renders the session's report now.
pub type ReportProbe = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct Endpoint {
    shared: Arc<Shared>,
    memory: MemoryProbe,
    report: ReportProbe,
}

/// `/status`: the snapshot with the memory.
#[derive(serde::Serialize)]
struct StatusBody {
    #[serde(flatten)]
    snapshot: Snapshot,
    memory: Memory,
}

/// Serves until a stop is asked for on `shared`.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, memory: MemoryProbe, report: ReportProbe) {
    let endpoint = Endpoint { shared: shared.clone(), memory, report };
    let app = Router::new()
        .route(
            "/",
            get(|| async { "spillway views serve: GET /status (JSON), /metrics (Prometheus), /report (HTML)\n" }),
        )
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/report", get(|State(e): State<Endpoint>| async move { axum::response::Html((e.report)()) }))
        .with_state(endpoint);
    let stopped = async move { shared.stopped().await };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
        tracing::warn!("the HTTP endpoint stopped: {e}");
    }
}

async fn status(State(e): State<Endpoint>) -> Json<StatusBody> {
    Json(StatusBody { snapshot: e.shared.snapshot(), memory: (e.memory)() })
}

async fn metrics(State(e): State<Endpoint>) -> impl IntoResponse {
    let text = metrics_text(&e.shared.snapshot(), &(e.memory)());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}
