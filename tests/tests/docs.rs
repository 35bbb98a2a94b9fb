//! The operator's documents keep up with the code: every environment variable
//! the configuration reads is in `docs/OPERATIONS.md` and `.env.example`, and
//! every metric the programs record is in the metrics table of OPERATIONS,
//! the Docker image builds with a Rust every locked crate accepts, and
//! `docker compose config` accepts the stack (where a compose tool is
//! installed) and refuses it without each of its secrets.

use std::{fs, path::Path};

fn workspace_file(rel: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Quoted upper-case names in the configuration sources (`core/src/config/`):
/// the variables (and the suffixes of the per-job and per-queue ones).
fn config_variables() -> Vec<String> {
    let mut sources = Vec::new();
    rust_sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/src/config"),
        &mut sources,
    );
    let mut names: Vec<String> = sources
        .iter()
        .flat_map(|src| src.split('"').skip(1).step_by(2))
        .filter(|s| {
            s.len() > 3
                && s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && s.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn rust_sources(dir: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).expect("source directory").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(fs::read_to_string(&path).expect("source file"));
        }
    }
}

/// Names passed to `metrics::counter!`, `gauge!` and `histogram!`.
fn metric_names() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut sources = Vec::new();
    for krate in ["api/src", "core/src", "worker/src"] {
        rust_sources(&root.join(krate), &mut sources);
    }
    let mut names = Vec::new();
    for src in &sources {
        for macro_name in ["counter!(", "gauge!(", "histogram!("] {
            for (i, _) in src.match_indices(macro_name) {
                let rest = src[i + macro_name.len()..].trim_start();
                if let Some(rest) = rest.strip_prefix('"')
                    && let Some(end) = rest.find('"')
                {
                    names.push(rest[..end].to_owned());
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Those of `vars` missing from OPERATIONS or `.env.example`.
fn undocumented<'a>(vars: &'a [String], ops: &str, example: &str) -> Vec<&'a String> {
    vars.iter()
        .filter(|v| !ops.contains(v.as_str()) || !example.contains(v.as_str()))
        .collect()
}

#[test]
fn every_configuration_variable_is_documented() {
    let ops = workspace_file("docs/OPERATIONS.md");
    let example = workspace_file(".env.example");
    let vars = config_variables();
    assert!(vars.len() > 40, "found only {} variables", vars.len());
    let missing = undocumented(&vars, &ops, &example);
    assert!(
        missing.is_empty(),
        "not in docs/OPERATIONS.md or .env.example: {missing:?}"
    );
}

#[test]
fn every_metric_is_documented() {
    let ops = workspace_file("docs/OPERATIONS.md");
    let names = metric_names();
    assert!(names.len() > 20, "found only {} metrics", names.len());
    let missing: Vec<_> = names
        .iter()
        .filter(|m| !ops.contains(&format!("`{m}")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics missing from docs/OPERATIONS.md: {missing:?}"
    );
}

/// The per-job and per-schedule overrides, named from the worker's own lists,
/// and each schedule's default as the operator's table shows it.
#[test]
fn every_job_and_schedule_override_is_documented() {
    use clicknback_worker::{jobs, schedules};
    let ops = workspace_file("docs/OPERATIONS.md");
    let example = workspace_file(".env.example");
    let mut vars: Vec<String> = jobs::registry()
        .names()
        .into_iter()
        .map(clicknback_core::retry::env_var)
        .collect();
    vars.extend(schedules::ALL.iter().map(|s| s.env_var()));
    let missing = undocumented(&vars, &ops, &example);
    assert!(
        missing.is_empty(),
        "not in docs/OPERATIONS.md or .env.example: {missing:?}"
    );
    for s in schedules::ALL {
        let row = format!("| `{}` | `{}` |", s.env_var(), s.default_cron());
        assert!(ops.contains(&row), "docs/OPERATIONS.md lacks {row}");
    }
}

/// `major.minor` of a `rust-version` (`"1.89.0"` → `(1, 89)`).
fn rust_minor(v: &str) -> (u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The image builds with the Rust the workspace declares, and that Rust is
/// new enough for every crate in `Cargo.lock` (a newer lock entry would fail
/// `docker build` with "requires rustc 1.xx").
#[test]
fn the_docker_image_s_rust_builds_every_locked_crate() {
    let manifest = workspace_file("Cargo.toml");
    let declared = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("the workspace declares rust-version");
    let dockerfile = workspace_file("Dockerfile");
    let image = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .and_then(|l| l.split('-').next())
        .expect("the Dockerfile builds FROM rust:<version>-…");
    assert_eq!(
        rust_minor(image),
        rust_minor(&declared),
        "Dockerfile's rust:{image} differs from the workspace's rust-version {declared}"
    );
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let too_new: Vec<String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            let need = p["rust_version"].as_str()?;
            (rust_minor(need) > rust_minor(&declared))
                .then(|| format!("{} {} needs {need}", p["name"], p["version"]))
        })
        .collect();
    assert!(
        too_new.is_empty(),
        "rust {declared} cannot build: {too_new:?}"
    );
}

/// The compose tool here: the `docker compose` plugin, else the standalone
/// `docker-compose`; `None` when neither runs.
fn compose_command() -> Option<std::process::Command> {
    let runs = |cmd: &mut std::process::Command| {
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if runs(std::process::Command::new("docker").args(["compose", "version"])) {
        let mut c = std::process::Command::new("docker");
        c.arg("compose");
        return Some(c);
    }
    runs(std::process::Command::new("docker-compose").arg("version"))
        .then(|| std::process::Command::new("docker-compose"))
}

#[test]
fn docker_compose_config_accepts_the_stack_and_requires_its_secrets() {
    let Some(_) = compose_command() else {
        eprintln!(
            "skipped: neither `docker compose` nor `docker-compose` is installed \
             (./scripts/test.sh installs Debian's docker-compose when it can)"
        );
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let secrets = [
        ("POSTGRES_PASSWORD", "compose-check-password"),
        ("JWT_SECRET", "compose-check-jwt-secret-0123456789abcdef"),
        (
            "DATA_ENCRYPTION_KEY",
            "dGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXktdGVzdDE=",
        ),
        ("PAYOUT_PROVIDER_URL", "https://payouts.example"),
        ("PAYOUT_PROVIDER_KEY", "compose-check-provider-key"),
    ];
    let empty = std::env::temp_dir().join(format!("clicknback-compose-{}.env", std::process::id()));
    fs::write(&empty, "").unwrap();
    let config = |env: &[(&str, &str)]| {
        let mut cmd = compose_command().unwrap();
        // No .env of the developer's, no variables of the shell's: only `env`.
        cmd.current_dir(&root)
            .args(["--project-directory", ".", "-f", "docker-compose.yml"])
            .arg("--env-file")
            .arg(&empty)
            .arg("config")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied());
        cmd.output().expect("the compose tool runs")
    };
    let out = config(&secrets);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    // The resolved file (YAML): every service, the app's two waits for
    // healthy dependencies each, the secrets filled in.
    for service in ["postgres", "redis", "mailpit", "api", "worker"] {
        assert!(
            text.contains(&format!("\n  {service}:\n")),
            "{service}: {text}"
        );
    }
    assert!(
        text.matches("condition: service_healthy").count() >= 4,
        "api and worker wait for healthy postgres and redis: {text}"
    );
    assert!(
        text.contains("postgres://clicknback:compose-check-password@postgres:5432/clicknback"),
        "{text}"
    );
    assert!(text.contains("healthcheck:"), "{text}");
    // Each secret is required: without it, config stops and names it.
    for (name, _) in secrets {
        let without: Vec<_> = secrets
            .iter()
            .copied()
            .filter(|(k, _)| *k != name)
            .collect();
        let out = config(&without);
        assert!(!out.status.success(), "config without {name} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("set {name}")), "{name}: {err}");
    }
    let _ = fs::remove_file(&empty);
}

#[test]
fn scripts_and_the_readme_name_the_queue_keys_the_product_writes() {
    use clicknback_core::{jobs::Queue, queues::storage_config};
    let done = storage_config("$1", Queue::Maintenance).done_jobs_set();
    assert!(
        workspace_file("bench/drain.sh").contains(&format!("\"{done}\"")),
        "bench/drain.sh counts finished jobs in {done}"
    );
    let scheduled = storage_config("clicknback", Queue::Attribution).scheduled_jobs_set();
    assert!(
        workspace_file("README.md").contains(&scheduled),
        "the README shows {scheduled}"
    );
}
