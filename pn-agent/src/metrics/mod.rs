//! The `/metrics` endpoint: serves, as OpenMetrics text, the registry in
//! which each subsystem registered its own metrics at start
//! (`Agent::register_metrics`, the API server's `ApiMetrics`).

use std::{net::SocketAddr, sync::Arc};

use prometheus_client::registry::Registry;

/// Serves `/metrics` until the process ends.
pub async fn serve(listen: SocketAddr, registry: Registry) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let registry = Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &registry) {
                    Ok(()) => (
                        axum::http::StatusCode::OK,
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    ),
                    Err(_) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(axum::http::header::CONTENT_TYPE, "text/plain")],
                        "encoding metrics failed\n".to_string(),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics endpoint {listen}"))?;
    axum::serve(listener, app).await.context("metrics server")
}
