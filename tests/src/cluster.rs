//! A real Redis Cluster on loopback ports, from the installed `redis-server`
//! and `redis-cli`: three primaries, each with a replica, and a short node
//! timeout so a failover takes seconds. Every node runs with its append-only
//! file, as a production cluster would; the processes and their data go away
//! when the cluster is dropped.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

use crate::procs::free_port;

/// The node timeout: how long a primary may be silent before its replica
/// takes over.
pub const NODE_TIMEOUT_MS: u64 = 2_000;

pub struct Node {
    pub port: u16,
    child: Option<Child>,
}

pub struct TestCluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

impl TestCluster {
    /// Starts 3 primaries and 3 replicas and joins them into one cluster.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "clicknback-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(Node::spawn(&dir).await);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        // Bounded: with a node that is not one of these, redis-cli would wait
        // for the cluster to join for ever.
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addrs)
                .args(["--cluster-replicas", "1", "--cluster-yes"])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("redis-cli --cluster create finished within 60 s")
        .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes, dir };
        cluster.wait_until_ok().await;
        cluster.wait_for_replicas().await;
        cluster
    }

    /// Waits until every replica has synced with its primary: a replica that
    /// never did refuses to take over (its data would be too old).
    async fn wait_for_replicas(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &self.nodes {
            let client = redis::Client::open(format!("redis://127.0.0.1:{}", n.port)).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            loop {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < deadline, "a replica did not sync:\n{info}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// `redis+cluster://` with every node, as `REDIS_URL` names a cluster.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// `CLUSTER <args>` on the first node still running.
    pub async fn cluster_cmd(&self, args: &[&str]) -> redis::Value {
        let node = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a running node");
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", node.port)).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = redis::cmd("CLUSTER");
        for a in args {
            cmd.arg(*a);
        }
        cmd.query_async(&mut c).await.unwrap()
    }

    /// The slot a key hashes to.
    pub async fn slot_of(&self, key: &str) -> i64 {
        match self.cluster_cmd(&["KEYSLOT", key]).await {
            redis::Value::Int(n) => n,
            other => panic!("KEYSLOT {key}: {other:?}"),
        }
    }

    /// The port of the primary that holds `key`'s slot.
    pub async fn primary_of(&self, key: &str) -> u16 {
        self.serving(key)
            .await
            .unwrap_or_else(|| panic!("no live primary holds the slot of {key}"))
    }

    /// The port of the live primary that holds `key`'s slot, if one does
    /// (none while a failover is under way).
    pub async fn serving(&self, key: &str) -> Option<u16> {
        let slot = self.slot_of(key).await;
        let listing = match self.cluster_cmd(&["NODES"]).await {
            redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
            redis::Value::VerbatimString { text, .. } => text,
            other => panic!("CLUSTER NODES: {other:?}"),
        };
        for line in listing.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            for range in &f[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                let (Ok(lo), Ok(hi)) = (lo.parse::<i64>(), hi.parse::<i64>()) else {
                    continue;
                };
                if (lo..=hi).contains(&slot) {
                    let addr = f[1].split('@').next().unwrap();
                    return addr.rsplit(':').next().unwrap().parse().ok();
                }
            }
        }
        None
    }

    /// SIGKILLs the node on `port` (a primary dies; its replica takes over).
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        if let Some(mut c) = node.child.take() {
            let _ = c.start_kill();
        }
    }

    /// Waits until the cluster answers `cluster_state:ok` with every slot served.
    pub async fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = match self.cluster_cmd(&["INFO"]).await {
                redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
                redis::Value::VerbatimString { text, .. } => text,
                _ => String::new(),
            };
            if info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384") {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster is not ok:\n{info}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Node {
    /// Starts one cluster-enabled redis-server on a free port under `dir`.
    /// A free port can be taken between its choice and the server's bind
    /// (by a client socket of another test, say), and then something else,
    /// or nothing, answers there: the node counts as started only when the
    /// server on its port is this process; otherwise it is started again on
    /// another port.
    async fn spawn(dir: &std::path::Path) -> Self {
        for _ in 0..10 {
            let port = free_port();
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                .args(["--appendonly", "yes", "--save", ""])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start redis-server (apt install redis-server)");
            if server_pid(port).await == child.id() {
                return Self {
                    port,
                    child: Some(child),
                };
            }
            let _ = child.start_kill();
        }
        panic!("no redis-server of the cluster started on a free port in 10 tries");
    }
}

/// The process id of the redis-server answering on `port`, once one does
/// (within 10 s); `None` if none does.
async fn server_pid(port: u16) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            && let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_secs(1),
                client.get_multiplexed_async_connection(),
            )
            .await
            && let Ok(Ok(info)) = tokio::time::timeout(
                Duration::from_secs(1),
                redis::cmd("INFO")
                    .arg("server")
                    .query_async::<String>(&mut c),
            )
            .await
        {
            return info
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|p| p.trim().parse().ok());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
