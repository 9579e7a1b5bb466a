//! Keeps the x86_64 binaries loadable on Amazon Linux 2023 (`provided.al2023`, glibc 2.34).
//!
//! glibc 2.35 gave x86_64's `hypot` and `hypotf` new symbol versions, so anything linked on a
//! newer glibc (Debian 12 has 2.36) that calls them needs `GLIBC_2.35`, and Lambda's loader
//! refuses the bootstrap. faer's eigen-decomposition and norms (the PCA) and plotters call
//! them. Defining them here, in the binary, binds those calls to these definitions, so no
//! `GLIBC_2.35` reference is left (`infra/build-lambdas.sh` checks every bootstrap). The
//! bodies are the `libm` crate's (musl's algorithm: no overflow or underflow in the squares).
//! aarch64's `hypot` has kept its old version, so this is x86_64 only.

/// `hypot(3)`: `sqrt(x² + y²)` without undue overflow or underflow.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[unsafe(no_mangle)]
pub extern "C" fn hypot(x: f64, y: f64) -> f64 {
    libm::hypot(x, y)
}

/// `hypotf(3)`, for `f32`.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[unsafe(no_mangle)]
pub extern "C" fn hypotf(x: f32, y: f32) -> f32 {
    libm::hypotf(x, y)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hypot_is_exact_on_pythagorean_triples_and_does_not_overflow() {
        assert_eq!(3.0f64.hypot(4.0), 5.0);
        assert_eq!(5.0f32.hypot(12.0), 13.0);
        assert_eq!(1e300f64.hypot(1e300), 1e300 * std::f64::consts::SQRT_2);
        assert_eq!(1e-300f64.hypot(0.0), 1e-300);
        assert!(f64::NAN.hypot(1.0).is_nan());
        assert_eq!(f64::INFINITY.hypot(f64::NAN), f64::INFINITY);
    }
}
