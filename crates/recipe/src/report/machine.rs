//! A one-line description of the machine latencies were measured on.

/// Instruction-set extensions lathe's kernels care about, in the order they are listed.
const X86_FEATURES: [&str; 5] = ["avx2", "fma", "f16c", "avx512f", "avx512vnni"];

/// The CPU model, logical CPU count, architecture and the SIMD extensions lathe's kernels use, as
/// in `AMD EPYC 7B13, 2 logical CPUs, x86_64 (avx2, fma, f16c)`. Reads `/proc/cpuinfo` where it
/// exists (Linux); elsewhere, or for what it lacks, falls back to the standard library
/// (`std::env::consts::ARCH`, `available_parallelism`, runtime feature detection).
pub fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let fallback_cpus = std::thread::available_parallelism().map_or(1, usize::from);
    describe(&cpuinfo, std::env::consts::ARCH, fallback_cpus, &detected_features())
}

/// The extensions of [`X86_FEATURES`] this process can use, by runtime detection.
fn detected_features() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        let detected = [
            std::arch::is_x86_feature_detected!("avx2"),
            std::arch::is_x86_feature_detected!("fma"),
            std::arch::is_x86_feature_detected!("f16c"),
            std::arch::is_x86_feature_detected!("avx512f"),
            std::arch::is_x86_feature_detected!("avx512vnni"),
        ];
        X86_FEATURES.iter().zip(detected).filter(|(_, on)| *on).map(|(name, _)| *name).collect()
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") { vec!["neon"] } else { Vec::new() }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Vec::new()
    }
}

/// The description from the text of `/proc/cpuinfo` (empty when absent), the architecture, the
/// CPU count to use when `cpuinfo` lists no processor, and the detected extensions (used when
/// `cpuinfo` has no `flags` line).
fn describe(cpuinfo: &str, arch: &str, fallback_cpus: usize, detected: &[&str]) -> String {
    let field = |key: &str| {
        cpuinfo.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == key).then(|| value.trim()).filter(|value| !value.is_empty())
        })
    };
    // x86 names the CPU in `model name`; arm64 kernels often only give `CPU part` or `Hardware`.
    let model = field("model name").or_else(|| field("Hardware")).unwrap_or("unknown CPU");
    let listed = cpuinfo.lines().filter(|line| line.split(':').next().map(str::trim) == Some("processor")).count();
    let cpus = if listed > 0 { listed } else { fallback_cpus };
    let features: Vec<&str> = match field("flags").or_else(|| field("Features")) {
        Some(flags) => {
            let flags: Vec<&str> = flags.split_whitespace().collect();
            // arm64 calls NEON `asimd`.
            let wanted = X86_FEATURES.iter().copied().chain(["asimd"]);
            wanted.filter(|feature| flags.contains(feature)).map(|f| if f == "asimd" { "neon" } else { f }).collect()
        }
        None => detected.to_vec(),
    };
    let plural = if cpus == 1 { "" } else { "s" };
    if features.is_empty() {
        format!("{model}, {cpus} logical CPU{plural}, {arch}")
    } else {
        format!("{model}, {cpus} logical CPU{plural}, {arch} ({})", features.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\
        flags\t\t: fpu sse2 avx2 fma f16c bmi2\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n\
        flags\t\t: fpu sse2 avx2 fma f16c bmi2\n";

    #[test]
    fn reads_model_count_and_flags() {
        assert_eq!(describe(X86, "x86_64", 7, &[]), "AMD EPYC 7B13, 2 logical CPUs, x86_64 (avx2, fma, f16c)");
    }

    #[test]
    fn arm_features_and_missing_model() {
        let arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm\nCPU part\t: 0xd0c\n";
        assert_eq!(describe(arm, "aarch64", 4, &[]), "unknown CPU, 1 logical CPU, aarch64 (neon)");
    }

    #[test]
    fn falls_back_without_cpuinfo() {
        assert_eq!(describe("", "x86_64", 4, &["avx2"]), "unknown CPU, 4 logical CPUs, x86_64 (avx2)");
        assert_eq!(describe("", "riscv64", 1, &[]), "unknown CPU, 1 logical CPU, riscv64");
    }

    #[test]
    fn this_machine_is_described() {
        let description = machine_description();
        assert!(description.contains(std::env::consts::ARCH), "{description}");
        assert!(description.contains("logical CPU"), "{description}");
    }
}
