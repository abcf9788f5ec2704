//! The actor catalog file at the service's edge: reading and validating it
//! (`catalog.path`, TOML `[[actors]]`, see `dynsig_core::catalog`), and watching it so that
//! an edited file takes effect without a restart.
//!
//! This module owns only the file: the compiled catalog goes to the engine through the
//! transform stage's command channel ([`crate::control::Command::SetCatalog`]), like every
//! other change to the engine, so the engine keeps a single owner.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use dynsig_core::catalog::{ActorMatcher, Catalog, CatalogError};
use metrics::{counter, gauge};
use tokio::sync::{mpsc, watch};

use crate::control::Command;
use crate::telemetry::names;

#[derive(Debug, thiserror::Error)]
pub enum CatalogFileError {
    #[error("catalog {path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("catalog {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("catalog {path}: {source}")]
    Invalid { path: String, source: CatalogError },
}

/// What identifies one version of the file: its modification time and length (the length
/// catches a rewrite within the file system's mtime granularity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let metadata = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        modified: metadata.modified().ok(),
        len: metadata.len(),
    })
}

/// Reads and compiles the catalog; the error names the file and the bad field.
pub fn load(path: &Path) -> Result<ActorMatcher, CatalogFileError> {
    let name = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CatalogFileError::Read {
        path: name(),
        source,
    })?;
    let catalog: Catalog = toml::from_str(&text).map_err(|source| CatalogFileError::Parse {
        path: name(),
        source,
    })?;
    let matcher = ActorMatcher::new(catalog).map_err(|source| CatalogFileError::Invalid {
        path: name(),
        source,
    })?;
    gauge!(names::CATALOG_ACTORS).set(matcher.actors().len() as f64);
    Ok(matcher)
}

/// The catalog loaded at start, and the watcher that reloads it.
pub struct Loaded {
    pub matcher: ActorMatcher,
    pub watcher: Watcher,
}

/// Loads the catalog at start: a bad file is an error, so the service does not start on a
/// catalog it cannot use.
pub fn load_at_start(path: &Path, check_every: Duration) -> Result<Loaded, CatalogFileError> {
    // Taken before reading: a change made while reading is then seen by the next check.
    let seen = fingerprint(path);
    let matcher = load(path)?;
    tracing::info!(path = %path.display(), actors = matcher.actors().len(), "catalog loaded");
    Ok(Loaded {
        matcher,
        watcher: Watcher {
            path: path.to_owned(),
            check_every,
            seen,
        },
    })
}

/// Checks the file's fingerprint every `check_every` and sends each good new version to
/// the engine. A bad version is logged and counted, and the engine keeps the previous
/// catalog: a typo in the file must not strip every signal of its actors.
pub struct Watcher {
    path: PathBuf,
    check_every: Duration,
    seen: Option<Fingerprint>,
}

impl Watcher {
    pub async fn run(
        mut self,
        commands: mpsc::Sender<Command>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(self.check_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = ticker.tick() => {}
            }
            let now = fingerprint(&self.path);
            if now == self.seen {
                continue;
            }
            self.seen = now;
            let path = self.path.clone();
            let loaded = tokio::task::spawn_blocking(move || load(&path))
                .await
                .expect("catalog loading does not panic");
            match loaded {
                Ok(matcher) => {
                    tracing::info!(path = %self.path.display(), actors = matcher.actors().len(), "catalog reloaded");
                    if commands.send(Command::SetCatalog(matcher)).await.is_err() {
                        return; // the transform stage has stopped
                    }
                }
                Err(error) => {
                    counter!(names::CATALOG_RELOAD_FAILURES).increment(1);
                    tracing::error!(%error, "catalog reload failed; keeping the previous catalog");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dynsig-catalog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn loads_actors_and_names_the_bad_field() {
        let good = write(
            "good.toml",
            "[[actors]]\nid = \"acme\"\nname = \"ACME\"\nkind = \"own_brand\"\nkeywords = [\"acme\"]\n",
        );
        let matcher = load(&good).unwrap();
        assert_eq!(matcher.actors()[0].id, "acme");

        let unknown_kind = write(
            "kind.toml",
            "[[actors]]\nid = \"acme\"\nname = \"ACME\"\nkind = \"rival\"\n",
        );
        let error = load(&unknown_kind).unwrap_err().to_string();
        assert!(error.contains("kind") && error.contains("rival"), "{error}");

        let duplicate = write(
            "dup.toml",
            "[[actors]]\nid = \"acme\"\nname = \"A\"\nkind = \"partner\"\n\
             [[actors]]\nid = \"acme\"\nname = \"B\"\nkind = \"partner\"\n",
        );
        let error = load(&duplicate).unwrap_err().to_string();
        assert!(error.contains("actors[1].id"), "{error}");
    }
}
