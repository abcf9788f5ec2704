//! dynsig as its operators and its consumers see it, checked with their own tools.
//!
//! - `operated_service`: `dynsig run` against the test broker with live traffic (posts
//!   stamped now, one malformed record). A real Prometheus (Debian's package, installed by
//!   `scripts/install-prometheus.sh`) scrapes it every second and evaluates the alert rules
//!   of `deploy/prometheus/`; the test queries Prometheus's HTTP API until the input rate is
//!   positive, the event-time-to-publish histogram has samples and every rule evaluates
//!   cleanly. Then: `promtool check metrics` on the service's `/metrics`; its labels are all
//!   bounded ones; every `dynsig_*` metric that the rules and the Grafana dashboard use
//!   exists in that output; every dashboard query is accepted by Prometheus. Meanwhile the consumer of
//!   `docs/python-consumer.md` (`tests/python/consume_trends.py`, confluent-kafka, with the
//!   Python code generated from `proto/`) reads `signals.trends` and must see the hashtag.
//! - `alert_rules_unit_tests`: `promtool check rules` and `promtool test rules` on
//!   `deploy/prometheus/`.
//! - `docs_show_the_tested_consumer`: the Python blocks of the guide are the tested script's.
//!
//! No assertion depends on timing: every wait has a deadline and fails with the logs.

mod support;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::{free_port, http_get, workspace_root, DynsigProcess, OutRecord, TestBroker, TestDir};

/// The longest any wait of these tests may take.
const WAIT: Duration = Duration::from_secs(45);
/// The hashtag every live post carries: it must lead the trend snapshots.
const HASHTAG: &str = "#opscheck";
/// Metrics the rules or the dashboard use that this test cannot make the service emit
/// (`metrics` renders a counter only once incremented): they must at least be defined in
/// `crates/dynsig/src/telemetry.rs`.
const NOT_EMITTED_HERE: &[&str] = &["dynsig_publish_errors_total"];
/// Label names whose values come from a small fixed set (an input kind, a reject reason, a
/// signal kind, a histogram bucket). A metric labelled with anything else (a term, an
/// author, an alert id) would grow one series per value: extend this list only with labels
/// that are bounded too.
const BOUNDED_LABELS: &[&str] = &[
    "topic",     // input and output topics, from the config
    "partition", // of the input topics
    "reason",
    "kind",
    "le",
    "stage",    // input, output
    "severity", // info, warning, critical
    "route",    // "all", or a team topic from the routing config
    "rule",     // trend, anomaly
    "verdict",  // useful, noise
];

/// Runs `tool args`, panicking with instructions when it is not installed.
fn run_tool(tool: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {tool} ({e}): install it with scripts/install-prometheus.sh")
        });
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input)
            .expect("write to the tool's stdin");
    }
    child.wait_with_output().expect("wait for the tool")
}

fn assert_tool_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn deploy_prometheus() -> PathBuf {
    workspace_root().join("deploy/prometheus")
}

fn files_ending(dir: &Path, suffix: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path().display().to_string())
        .filter(|p| p.ends_with(suffix))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *{suffix} in {}", dir.display());
    files
}

#[test]
fn alert_rules_unit_tests() {
    let dir = deploy_prometheus();
    let rules = files_ending(&dir, ".rules.yml");
    let mut args = vec!["check", "rules"];
    args.extend(rules.iter().map(String::as_str));
    assert_tool_ok("promtool check rules", &run_tool("promtool", &args, None));

    let tests = files_ending(&dir, ".test.yml");
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    assert_tool_ok("promtool test rules", &run_tool("promtool", &args, None));

    let config = dir.join("prometheus.yml");
    let out = run_tool(
        "promtool",
        &["check", "config", config.to_str().unwrap()],
        None,
    );
    assert_tool_ok("promtool check config", &out);
}

/// Every fenced Python block of the guide must be part of the script the suite runs, so that
/// what readers copy is what was tested.
#[test]
fn docs_show_the_tested_consumer() {
    let root = workspace_root();
    let guide = std::fs::read_to_string(root.join("docs/python-consumer.md")).expect("guide");
    let script =
        std::fs::read_to_string(root.join("tests/python/consume_trends.py")).expect("script");
    let blocks: Vec<&str> = guide
        .split("```python\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or_default())
        .collect();
    assert!(
        !blocks.is_empty(),
        "docs/python-consumer.md shows no Python"
    );
    for block in blocks {
        assert!(
            script.contains(block),
            "docs/python-consumer.md shows code that tests/python/consume_trends.py does not run:\n{block}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus
// ---------------------------------------------------------------------------------------------

/// `prometheus` on a free loopback port, scraping one target every second and evaluating the
/// alert rules of `deploy/prometheus/` every second. Killed on drop (its data is a temp dir).
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
    _dir: TestDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = TestDir::new("prometheus");
        let rules = files_ending(&deploy_prometheus(), ".rules.yml");
        let config = dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files: {rules:?}\n\
                 scrape_configs:\n  - job_name: dynsig\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        );
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.path().join("prometheus.log");
        let out = File::create(&log).expect("create prometheus log");
        let err = out.try_clone().expect("clone log handle");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start prometheus ({e}): install it with scripts/install-prometheus.sh"
                )
            });
        Prometheus {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        match http_get(&self.addr, path).await {
            Ok((_, body)) => serde_json::from_str(&body).map_err(|e| format!("{e}: {body}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The result vector of an instant query, or Prometheus's error (e.g. a parse error).
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let answer = self
            .get(&format!("/api/v1/query?query={}", percent_encode(promql)))
            .await?;
        if answer["status"] != "success" {
            return Err(format!("{promql}: {answer}"));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Whether `promql` returns at least one series.
    async fn holds(&self, promql: &str) -> bool {
        self.query(promql).await.is_ok_and(|r| !r.is_empty())
    }

    /// The rules Prometheus loaded, as (name, health, last error).
    async fn rules(&self) -> Vec<(String, String, String)> {
        let Ok(answer) = self.get("/api/v1/rules").await else {
            return Vec::new();
        };
        let groups = answer["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (s("name"), s("health"), s("lastError"))
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// What the rules and the dashboard query
// ---------------------------------------------------------------------------------------------

/// The `dynsig_*` identifiers in `text` (metric names in PromQL, wherever they stand).
fn dynsig_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("dynsig_") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_ident {
            names.insert(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    names
}

/// Sample names of a Prometheus exposition text (`_bucket`, `_sum`, `_count` included).
fn sample_names(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

/// Label names used in a Prometheus exposition text, with a metric using each.
fn label_names(metrics: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((set, _)) = rest.rsplit_once('}') else {
            continue;
        };
        // Values are quoted and may hold `,` or `=`: take the name before each `="`.
        for part in set.split("\",") {
            if let Some((label, _)) = part.split_once("=\"") {
                labels.push((label.trim().to_string(), name.to_string()));
            }
        }
    }
    labels
}

/// The dashboard's queries, with Grafana's variables replaced by what Prometheus accepts.
fn dashboard_queries() -> Vec<(String, String)> {
    let dir = workspace_root().join("deploy/grafana/dashboards");
    let mut queries = Vec::new();
    for path in files_ending(&dir, ".json") {
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).unwrap();
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("target expr");
                let runnable = expr
                    .replace("$__rate_interval", "1m")
                    .replace("$instance", ".+");
                queries.push((format!("{}: {}", panel["title"], expr), runnable));
            }
        }
    }
    queries
}

// ---------------------------------------------------------------------------------------------
// The service under traffic
// ---------------------------------------------------------------------------------------------

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One batch of live posts, stamped now: each author posts the hashtag and a word of its
/// own, so that the hashtag is the only term with enough authors to be ranked.
fn live_posts(batch: usize) -> Vec<OutRecord> {
    const WORDS: &[&str] = &[
        "market", "price", "launch", "store", "delivery", "invoice", "shipping", "product",
    ];
    WORDS
        .iter()
        .enumerate()
        .map(|(i, word)| {
            let post = json!({
                "id": format!("ops-{batch}-{i}"),
                "ts": now_ms(),
                "source": "forum",
                "author": format!("author{i}"),
                "text": format!("{word} {HASHTAG}"),
            });
            OutRecord::new(post.to_string())
        })
        .collect()
}

/// A child process killed when the test ends (e.g. fails) before taking it back.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The Python consumer of the guide, started on `topic`; its stdout is read when it exits.
fn start_python_consumer(broker: &TestBroker, topic: &str, dir: &TestDir) -> KillOnDrop {
    let root = workspace_root();
    let python = install_test_python();
    let generated = dir.path().join("generated");
    std::fs::create_dir_all(&generated).unwrap();
    let proto = root.join("proto");
    let out = run_tool(
        &python,
        &[
            "-m",
            "grpc_tools.protoc",
            &format!("-I{}", proto.display()),
            &format!("--python_out={}", generated.display()),
            proto.join("dynsig/v1/signals.proto").to_str().unwrap(),
            proto.join("dynsig/v1/input.proto").to_str().unwrap(),
        ],
        None,
    );
    assert_tool_ok("protoc (grpcio-tools) on proto/", &out);
    let child = Command::new(&python)
        .arg(root.join("tests/python/consume_trends.py"))
        .args(["--bootstrap", broker.bootstrap(), "--topic", topic])
        .arg(format!("--proto-dir={}", generated.display()))
        .args([
            "--max-windows",
            "2",
            "--timeout",
            &WAIT.as_secs().to_string(),
        ])
        // Group joins on the test broker take about half the session timeout.
        .args(["-X", "session.timeout.ms=6000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Python consumer");
    KillOnDrop(Some(child))
}

/// `scripts/install-test-python.sh`: the venv with confluent-kafka and grpcio-tools
/// (installed on first use); returns its python.
fn install_test_python() -> String {
    let script = workspace_root().join("scripts/install-test-python.sh");
    let out = Command::new(&script)
        .output()
        .expect("run install-test-python.sh");
    assert_tool_ok("scripts/install-test-python.sh", &out);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operated_service() {
    let broker = TestBroker::start();
    let (posts, events, trends) = (
        broker.topic("ops.posts"),
        broker.topic("ops.events"),
        broker.topic("ops.signals.trends"),
    );
    broker.create_topics(&[(&posts, 1), (&events, 1)]).await;
    let dir = TestDir::new("operated");
    // Short windows closed by the wall clock (events stays empty and goes idle after 1 s),
    // ranked from the first window on.
    let config = dir.write(
        "dynsig.toml",
        &format!(
            r#"[kafka]
group_id = "{group}"
[kafka.client]
"session.timeout.ms" = "6000"
[topics]
posts = "{posts}"
events = "{events}"
trends = "{trends}"
anomalies = "{prefix}signals.anomalies"
alerts = "{prefix}signals.alerts"
ecosystem = "{prefix}signals.ecosystem"
dlq = "{prefix}dynsig.dlq"
late = "{prefix}signals.late"
[window]
size_ms = 2000
allowed_lateness_ms = 200
idle_timeout_ms = 1000
[trends]
warmup_windows = 0
"#,
            group = broker.topic("dynsig-ops"),
            prefix = broker.topic("ops."),
        ),
    );
    let http = format!("127.0.0.1:{}", free_port());
    let mut service = DynsigProcess::spawn(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--brokers",
            broker.bootstrap(),
            "--http-addr",
            &http,
        ],
        &[],
    );
    let fail = |service: &DynsigProcess, prometheus: Option<&Prometheus>, msg: String| -> ! {
        let prom_logs = prometheus.map(Prometheus::logs).unwrap_or_default();
        panic!(
            "{msg}\n----- dynsig logs -----\n{}\n----- prometheus logs -----\n{prom_logs}",
            service.logs()
        );
    };

    let deadline = Instant::now() + WAIT;
    while !matches!(http_get(&http, "/readyz").await, Ok((200, _))) {
        if Instant::now() > deadline || !service.is_running() {
            fail(&service, None, "dynsig did not become ready".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let prometheus = Prometheus::start(&http);
    let mut consumer = start_python_consumer(&broker, &trends, &dir);

    // Live traffic until Prometheus has seen it all: a rate needs two scrapes that differ,
    // so records keep coming while the checks run. One malformed record makes the
    // dead-letter counters appear.
    broker.produce(&posts, &[OutRecord::new("{not json")]).await;
    let checks = [
        r#"up{job="dynsig"} == 1"#,
        r#"sum(rate(dynsig_events_consumed_total{job="dynsig"}[1m])) > 0"#,
        r#"sum(dynsig_event_time_to_publish_seconds_count{job="dynsig"}) > 0"#,
        r#"sum(dynsig_dlq_records_total{job="dynsig", reason="invalid_json"}) > 0"#,
        // From librdkafka's statistics, every 5 s: present once the first ones came.
        r#"count(dynsig_consumer_lag{job="dynsig"}) > 0"#,
    ];
    let deadline = Instant::now() + WAIT;
    let mut batch = 0;
    loop {
        broker.produce(&posts, &live_posts(batch)).await;
        batch += 1;
        let mut pending = Vec::new();
        for check in checks {
            if !prometheus.holds(check).await {
                pending.push(check.to_string());
            }
        }
        let rules = prometheus.rules().await;
        if rules.is_empty() {
            pending.push("the alert rules are loaded".into());
        }
        for (name, health, error) in rules {
            if health != "ok" {
                pending.push(format!("rule {name}: health {health} {error}"));
            }
        }
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline || !service.is_running() {
            fail(
                &service,
                Some(&prometheus),
                format!("Prometheus checks still failing after {WAIT:?}: {pending:#?}"),
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The exposition format, checked by Prometheus's own linter.
    let (status, metrics) = http_get(&http, "/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200);
    let lint = run_tool("promtool", &["check", "metrics"], Some(metrics.as_bytes()));
    assert_tool_ok(&format!("promtool check metrics on\n{metrics}\n"), &lint);

    for (label, metric) in label_names(&metrics) {
        assert!(
            BOUNDED_LABELS.contains(&label.as_str()),
            "{metric} has the label {label}, not known to be bounded ({BOUNDED_LABELS:?})"
        );
    }

    // What the rules and the dashboard use exists: in this /metrics, or (for counters that
    // only failures increment) among the names defined in telemetry.rs.
    let exported = sample_names(&metrics);
    let telemetry =
        std::fs::read_to_string(workspace_root().join("crates/dynsig/src/telemetry.rs"))
            .expect("telemetry.rs");
    let defined = dynsig_names(&telemetry);
    let mut used = BTreeSet::new();
    for file in files_ending(&deploy_prometheus(), ".rules.yml")
        .into_iter()
        .chain(files_ending(
            &workspace_root().join("deploy/grafana/dashboards"),
            ".json",
        ))
    {
        for name in dynsig_names(&std::fs::read_to_string(&file).unwrap()) {
            used.insert((name, file.clone()));
        }
    }
    for (name, file) in &used {
        let known = exported.contains(name)
            || (NOT_EMITTED_HERE.contains(&name.as_str()) && defined.contains(name));
        assert!(
            known,
            "{file} uses {name}, which dynsig does not export:\n{metrics}"
        );
    }

    // Every dashboard query parses and runs in Prometheus.
    for (what, query) in dashboard_queries() {
        if let Err(e) = prometheus.query(&query).await {
            panic!("dashboard query rejected by Prometheus: {what}: {e}");
        }
    }

    // The Python consumer: two closed windows, the hashtag leading at least one.
    let consumer = consumer.0.take().expect("the consumer is still running");
    let python = tokio::task::spawn_blocking(move || consumer.wait_with_output())
        .await
        .unwrap()
        .expect("wait for the Python consumer");
    let stdout = String::from_utf8_lossy(&python.stdout);
    let report = format!(
        "Python consumer ({}):\n{stdout}{}",
        python.status,
        String::from_utf8_lossy(&python.stderr)
    );
    if !python.status.success() {
        fail(&service, Some(&prometheus), report);
    }
    let windows: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {report}")))
        .collect();
    assert!(
        windows.iter().any(|w| w["top"][0][0] == HASHTAG),
        "{HASHTAG} should lead a trend snapshot: {report}"
    );

    let status = service.terminate();
    assert!(
        status.success(),
        "dynsig should exit 0 on SIGTERM, got {status}"
    );
}
