//! Serving: the tonic server with the Federation, Jobs and health services on one listener.

/// The gRPC handlers.
pub mod services;

use std::future::Future;
use std::sync::Arc;

use shoal_proto::v1::federation_server::FederationServer;
use shoal_proto::v1::jobs_server::JobsServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::coordinator::Coordinator;
use crate::server::services::{FederationService, JobsService};

/// Serves `coord` on `listener` until `shutdown` resolves, then stops jobs, closes client streams
/// and returns once in-flight requests have drained.
pub async fn serve(
    listener: TcpListener,
    coord: Arc<Coordinator>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let max = coord.config.max_message_bytes;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<FederationServer<FederationService>>()
        .await;
    health.set_serving::<JobsServer<JobsService>>().await;
    let federation = FederationServer::new(FederationService::new(coord.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let jobs = JobsServer::new(JobsService::new(coord.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let stopping = coord.clone();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &coord.config.tls {
        builder = builder.tls_config(tls.clone())?;
    }
    // Set once jobs have stopped and client streams are closed: from then on the drain below
    // only waits for connections to go, which a dead peer's never does until keep-alive gives
    // up on it (30 s), so the drain is bounded.
    let stopped = Arc::new(tokio::sync::Notify::new());
    let stopped_tx = stopped.clone();
    let server = builder
        // Dead peers (a pulled cable, a killed container) are found without waiting for a task.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .trace_fn(|req| tracing::debug_span!("rpc", path = %req.uri().path()))
        .add_service(health_service)
        .add_service(federation)
        .add_service(jobs)
        // Our own listener: tonic's tcp_nodelay setting does not reach it, so set it here. Without
        // it Nagle's algorithm and delayed ACKs add ~40 ms to every multi-packet message.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                shutdown.await;
                tracing::info!("shutting down");
                stopping.shutdown().await;
                stopped_tx.notify_one();
            },
        );
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r?,
        _ = async {
            stopped.notified().await;
            tokio::time::sleep(DRAIN_LIMIT).await;
        } => {
            tracing::warn!("connections still open {DRAIN_LIMIT:?} after shutdown (dead peers?); closing them");
        }
    }
    Ok(())
}

/// Longest wait, once jobs have stopped, for open connections to close.
pub const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
