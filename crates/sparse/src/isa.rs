//! Instruction-set selection: detected once, cached, and pinned to the portable path with
//! `LATHE_FORCE_ISA=scalar`, exactly as lathe-quant does it (the crates share the variable, not
//! code: both are leaves).

use std::sync::OnceLock;

/// A kernel family lathe-sparse can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// Portable Rust; the reference every other path is tested against.
    Scalar,
    /// x86_64 with AVX2 and FMA.
    Avx2,
}

impl Isa {
    /// Lower-case name (`scalar`, `avx2`), as `LATHE_FORCE_ISA` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
        }
    }

    /// Whether this CPU can run the family.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 => false,
        }
    }

    /// Every family this CPU supports, scalar first.
    pub fn supported() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2].into_iter().filter(|isa| isa.is_supported()).collect()
    }

    /// The family the dispatched kernels use: the best supported one, or scalar when the
    /// environment variable `LATHE_FORCE_ISA` is `scalar`. Decided once per process.
    pub fn active() -> Isa {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let forced = std::env::var("LATHE_FORCE_ISA").ok();
            match forced.as_deref() {
                Some("scalar") => Isa::Scalar,
                _ if Isa::Avx2.is_supported() => Isa::Avx2,
                _ => Isa::Scalar,
            }
        })
    }
}
