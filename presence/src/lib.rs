//! The presence service: online status and typing, kept in Redis, fed by the
//! gateways over RabbitMQ. Not built yet (issue 3): today the service starts,
//! reports that it does nothing, and waits for its stop signal, so the
//! bring-up and the manifests already have their place for it.

/// Runs until `shutdown` resolves.
pub async fn run_until(shutdown: impl std::future::Future<Output = ()>) {
    tracing::warn!("presence service: not implemented yet (issue 3); idling");
    shutdown.await;
}
