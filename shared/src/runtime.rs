//! The Tokio runtime every service runs on, sized by `runtime.worker_threads`
//! (config/default.toml says why it matters on a shared machine).

use crate::config::RuntimeSettings;
use std::future::Future;

/// Runs `service` to its end as a task on the runtime's workers, and
/// returns what it returned (a panic in it is resumed here).
///
/// Not `block_on(service)`: that polls the future on the calling thread,
/// outside the workers, so everything it awaits (a Postgres reply, a
/// delivery from a task on a worker) is first picked up by a worker and then
/// handed over to this thread, one more wake-up and context switch each
/// time. The persister's whole pipeline is its service future: run that way
/// it made four futex calls per message (docs/benchmarks.md).
pub fn run<F>(settings: &RuntimeSettings, service: F) -> std::io::Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let runtime = build(settings)?;
    Ok(runtime.block_on(async move {
        match tokio::spawn(service).await {
            Ok(output) => output,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("the service task was cancelled: {e}"),
        }
    }))
}

/// The name of the runtime's threads (`top -H`, `perf`): its workers and
/// its blocking pool.
pub const THREAD_NAME: &str = "chat-worker";

/// A multi-thread runtime with the configured number of workers (0: Tokio's
/// default, one per core or `TOKIO_WORKER_THREADS`).
pub fn build(settings: &RuntimeSettings) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if settings.worker_threads > 0 {
        builder.worker_threads(settings.worker_threads);
    }
    builder.thread_name(THREAD_NAME).enable_all().build()
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
    fn a_service_runs_on_a_worker_thread_and_its_result_comes_back() {
        let settings = RuntimeSettings { worker_threads: 1 };
        let ran_on = run(&settings, async {
            std::thread::current().name().map(str::to_owned)
        })
        .unwrap();
        assert_eq!(ran_on.as_deref(), Some(THREAD_NAME));
        assert_ne!(
            std::thread::current().name(),
            Some(THREAD_NAME),
            "the caller is not a worker, so the service did not run on it"
        );
    }

    #[test]
    #[should_panic(expected = "the service failed")]
    fn a_panic_in_the_service_reaches_the_caller() {
        let settings = RuntimeSettings { worker_threads: 1 };
        let _ = run(&settings, async { panic!("the service failed") });
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
