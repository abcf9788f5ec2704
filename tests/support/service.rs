//! The service as a test sees it: `dynsig run` as a child process with its config file and
//! HTTP address, and waits that fail with the service's logs.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    free_port, http_get, http_request, metric_sum, poll_until, DynsigProcess, Record, TestBroker,
    TestDir,
};

/// The longest any single wait of [`Service`] may take.
pub const WAIT: Duration = Duration::from_secs(90);

/// A running `dynsig run`, with the helpers that fail with its logs.
pub struct Service {
    pub process: DynsigProcess,
    pub http: String,
    dlq: String,
    _dir: TestDir,
}

impl Service {
    /// Starts `dynsig run` with `config` (TOML) and extra environment variables; `dlq` is
    /// the dead-letter topic, whose records are not JSON.
    pub fn start(broker: &TestBroker, dlq: &str, config: &str, env: &[(&str, &str)]) -> Service {
        let dir = TestDir::new("e2e-config");
        let path = dir.write("dynsig.toml", config);
        let http = format!("127.0.0.1:{}", free_port());
        let process = DynsigProcess::spawn(
            &[
                "run",
                "--config",
                path.to_str().unwrap(),
                "--brokers",
                broker.bootstrap(),
                "--http-addr",
                &http,
            ],
            env,
        );
        Service {
            process,
            http,
            dlq: dlq.to_owned(),
            _dir: dir,
        }
    }

    /// Panics with `msg` and the end of the service's logs.
    pub fn fail(&self, msg: impl std::fmt::Display) -> ! {
        let logs = self.process.logs();
        let lines: Vec<&str> = logs.lines().collect();
        let tail = lines[lines.len().saturating_sub(200)..].join("\n");
        panic!("{msg}\n----- dynsig logs (last 200 lines) -----\n{tail}\n----- end of dynsig logs -----");
    }

    pub fn check(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(msg());
        }
    }

    pub fn ensure_running(&mut self, when: &str) {
        if let Some(status) = self.process.exit_status() {
            self.fail(format!("dynsig exited ({status}) {when}"));
        }
    }

    /// Waits until `GET path` answers 200; fails early if the service exits.
    pub async fn wait_http_ok(&mut self, path: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            self.ensure_running(&format!("while waiting for {path} to answer 200"));
            match http_get(&self.http, path).await {
                Ok((200, body)) => return body,
                Ok((status, body)) => last = format!("{status} {body}"),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                self.fail(format!(
                    "GET {path} not 200 after {timeout:?}; last answer: {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads `topic` from the start until `done` holds; fails (with the logs and the last
    /// records read) when it does not within [`WAIT`] or when the service exits meanwhile.
    pub async fn wait_for_records(
        &mut self,
        broker: &TestBroker,
        topic: &str,
        what: &str,
        mut done: impl FnMut(&[Record]) -> bool,
    ) -> Vec<Record> {
        let deadline = Instant::now() + WAIT;
        let Some(mut reader) = broker.reader(topic, WAIT).await else {
            self.fail(format!(
                "topic {topic} was not created within {WAIT:?} (waiting for {what})"
            ));
        };
        let process = &mut self.process;
        let mut exited = None;
        let ok = reader
            .read_until(deadline, |records| {
                if done(records) {
                    return true;
                }
                exited = process.exit_status();
                exited.is_some()
            })
            .await
            && exited.is_none();
        let records = reader.into_records();
        if !ok {
            let last: Vec<String> = records
                .iter()
                .rev()
                .take(5)
                .map(|r| {
                    let p = String::from_utf8_lossy(r.payload.as_deref().unwrap_or_default())
                        .into_owned();
                    format!(
                        "  {}@{} {}",
                        r.partition,
                        r.offset,
                        p.chars().take(400).collect::<String>()
                    )
                })
                .collect();
            let why = match exited {
                Some(status) => format!("dynsig exited ({status})"),
                None => format!("not within {WAIT:?}"),
            };
            self.fail(format!(
                "waiting for {what} on {topic}: {why}; read {} records, the last ones:\n{}",
                records.len(),
                last.join("\n")
            ));
        }
        // Outputs are JSON; the dead-letter topic holds the rejected inputs as they were.
        let not_json: Vec<String> = records
            .iter()
            .filter(|r| !parse(r).is_object())
            .map(|r| {
                format!(
                    "{}@{}: {}",
                    r.partition,
                    r.offset,
                    String::from_utf8_lossy(r.payload.as_deref().unwrap_or_default())
                )
            })
            .collect();
        if topic != self.dlq && !not_json.is_empty() {
            self.fail(format!(
                "{topic}: every output record must be a JSON object; not: {not_json:?}"
            ));
        }
        records
    }

    /// One request; the answer's status and body (JSON, or Null when empty or not JSON).
    pub async fn try_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> std::io::Result<(u16, Value)> {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer));
        }
        let (status, text) = http_request(&self.http, method, path, &headers, body).await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        match self.try_call(method, path, token, body).await {
            Ok(answer) => answer,
            Err(e) => self.fail(format!("{method} {path}: {e}")),
        }
    }

    /// Expects `status` and returns the body; fails with both when it differs.
    pub async fn expect(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        status: u16,
    ) -> Value {
        let (got, answer) = self.call(method, path, token, body).await;
        self.check(got == status, || {
            format!("{method} {path} {body:?}: expected {status}, got {got} {answer}")
        });
        answer
    }

    /// GETs `path` until `done` holds for its JSON body; fails with the last body after `WAIT`.
    pub async fn get_until(
        &mut self,
        path: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            self.ensure_running(&format!("while waiting for {what}"));
            // Connection errors too are retried: the server may not listen yet.
            let last = match self.try_call("GET", path, None, None).await {
                Ok((200, body)) if done(&body) => return body,
                Ok((status, body)) => format!("{status} {body}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                self.fail(format!(
                    "GET {path}: no {what} within {WAIT:?}; last answer {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for `/metrics` to show `name` with a sum meeting `ok`.
    pub async fn wait_metric(&self, name: &str, ok: impl Fn(f64) -> bool) {
        let http = self.http.clone();
        let ok = &ok;
        let found = poll_until(WAIT, || {
            let http = http.clone();
            async move {
                match http_get(&http, "/metrics").await {
                    Ok((200, body)) => metric_sum(&body, name).filter(|v| ok(*v)),
                    _ => None,
                }
            }
        })
        .await;
        if found.is_none() {
            let last = http_get(&self.http, "/metrics")
                .await
                .map(|(_, b)| b)
                .unwrap_or_default();
            self.fail(format!("/metrics: {name} not as expected:\n{last}"));
        }
    }
}

/// The record's JSON payload, or Null when it is not JSON ([`Service::wait_for_records`]
/// fails on such records, with the logs, before any assertion looks at them).
pub fn parse(r: &Record) -> Value {
    serde_json::from_slice(r.payload.as_deref().unwrap_or_default()).unwrap_or(Value::Null)
}
