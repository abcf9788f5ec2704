//! A TCP proxy in front of the test broker that can throttle what clients *send* (produce
//! requests carry the records; fetch requests are small), to make a slow producer side
//! without slowing consumption. Used by [`super::TestBroker::start_behind_proxy`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes per second allowed from clients to the broker, over all connections; 0: no limit.
#[derive(Clone, Default)]
pub struct Throttle(Arc<AtomicU64>);

impl Throttle {
    pub fn set_upstream_bytes_per_sec(&self, rate: u64) {
        self.0.store(rate, Ordering::Relaxed);
    }
}

/// Runs the proxy on its own thread (the tests' runtimes come and go) and returns the port
/// it listens on.
pub fn start(broker: SocketAddr, throttle: Throttle) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let throttle = throttle.clone();
                tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect(broker).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (upstream_read, upstream_write) = upstream.into_split();
                    tokio::spawn(copy(client_read, upstream_write, Some(throttle)));
                    copy(upstream_read, client_write, None).await;
                });
            }
        });
    });
    port
}

/// Copies until either side closes; with a throttle, at most its rate (in 4 KiB steps, so
/// a large produce request trickles through rather than passing in one go).
async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    throttle: Option<Throttle>,
) {
    let mut buffer = vec![0; 4096];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(rate) = throttle.as_ref().map(|t| t.0.load(Ordering::Relaxed)) {
            if rate > 0 {
                tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
