//! Helpers of the unit tests.

/// Runs a future to completion on a fresh single-threaded runtime (time and I/O enabled).
pub(crate) fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}
