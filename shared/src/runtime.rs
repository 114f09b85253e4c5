//! The Tokio runtime every service runs on, sized by `runtime.worker_threads`
//! (config/default.toml says why it matters on a shared machine).

use crate::config::RuntimeSettings;

/// A multi-thread runtime with the configured number of workers (0: Tokio's
/// default, one per core or `TOKIO_WORKER_THREADS`).
pub fn build(settings: &RuntimeSettings) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if settings.worker_threads > 0 {
        builder.worker_threads(settings.worker_threads);
    }
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_worker_count_is_the_runtimes() {
        let runtime = build(&RuntimeSettings { worker_threads: 1 }).unwrap();
        assert_eq!(runtime.metrics().num_workers(), 1);
        let runtime = build(&RuntimeSettings { worker_threads: 3 }).unwrap();
        assert_eq!(runtime.metrics().num_workers(), 3);
    }

    #[test]
    fn zero_means_tokios_default() {
        let runtime = build(&RuntimeSettings { worker_threads: 0 }).unwrap();
        let default = tokio::runtime::Builder::new_multi_thread()
            .build()
            .unwrap()
            .metrics()
            .num_workers();
        assert_eq!(runtime.metrics().num_workers(), default);
    }
}
