//! The instruction sets of the kernels: detection and selection.

#[cfg(target_arch = "x86_64")]
use super::x86;

/// Instruction set of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// x86_64 AVX-512F: GEMM tiles of 7 rows x 32 columns (14 zmm accumulators).
    Avx512,
    /// x86_64 AVX2 + FMA: GEMM tiles of 6 rows x 16 columns (12 ymm accumulators).
    Avx2,
    /// Plain Rust (no `unsafe`), any target: the fallback and the reference of the tests.
    Portable,
}

impl Isa {
    /// The best instruction set of this CPU.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if Isa::Avx512.available() {
                return Isa::Avx512;
            }
            if Isa::Avx2.available() {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Whether this CPU can run the kernels of `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every instruction set this CPU can run (the tests run each).
    pub fn all_available() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2, Isa::Portable]
            .into_iter()
            .filter(|i| i.available())
            .collect()
    }

    /// Parses `avx512`, `avx2` or `portable`.
    pub fn parse(name: &str) -> Option<Isa> {
        match name {
            "avx512" => Some(Isa::Avx512),
            "avx2" => Some(Isa::Avx2),
            "portable" => Some(Isa::Portable),
            _ => None,
        }
    }

    /// The name `parse` reads.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// (rows, columns) of one GEMM tile.
    pub(super) fn tile(self) -> (usize, usize) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => (x86::avx512::GEMM_MR, 32),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => (x86::avx2::GEMM_MR, 16),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 => (7, 32),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 => (6, 16),
            Isa::Portable => (4, 16),
        }
    }
}
