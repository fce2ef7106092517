//! A cluster on this machine (`spillway cluster up`): Ballista's scheduler in this process, and
//! N executors as child processes (`spillway cluster executor`), each with an equal share of the
//! cluster's budget: the pool of its tasks is what its governor may lend of that share, and the
//! share is its memory cgroup's hard limit where one can be made (`spillway-isolate`; rlimits
//! otherwise). Stopping (or dropping) the cluster stops the executors, removes their cgroups and
//! their work folders; an executor whose parent dies is sent SIGTERM by the kernel.

use crate::{Error, Result};
use ballista_core::config::TaskSchedulingPolicy;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use spillway_governor::fmt_bytes;
use spillway_isolate::cgroup::Cgroup;
use spillway_isolate::Confinement;
use spillway_project::ClusterUrl;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long [`LocalCluster::start`] waits for an executor to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What to start.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The address everything binds and advertises (`127.0.0.1` for loopback).
    pub host: String,
    /// The scheduler's port (0: a free one).
    pub port: u16,
    /// How many executors.
    pub executors: usize,
    /// The cluster's budget, split evenly between the executors.
    pub budget: u64,
    /// Tasks at once per executor.
    pub vcores: usize,
    /// The spillway binary (`<exe> cluster executor ...`).
    pub exe: PathBuf,
    /// Arguments every executor gets before its own (e.g. `--ledger`, `--config`).
    pub args: Vec<String>,
    /// The machine-wide ledger's capacity, passed on (an executor in its cgroup would take its
    /// own limit for the machine's).
    pub ledger_capacity: Option<u64>,
    /// Executors' work folders go under it (removed at stop).
    pub work_dir: PathBuf,
}

/// One executor child.
#[derive(Debug)]
pub struct Executor {
    /// Its name in the scheduler.
    pub id: String,
    /// Its process.
    pub pid: u32,
    /// Its share of the budget (its cgroup's limit).
    pub share: u64,
    /// Its Arrow Flight port.
    pub port: u16,
    /// Its log (what it writes to stderr).
    pub log: PathBuf,
    child: std::process::Child,
    cgroup: Option<Cgroup>,
}

impl Executor {
    /// `cgroup v1 limit 2GiB` or `rlimit`.
    pub fn confinement(&self) -> String {
        match &self.cgroup {
            Some(cg) => format!("{} limit {}", cg.version(), fmt_bytes(cg.limit())),
            None => format!("rlimit {}", fmt_bytes(self.share)),
        }
    }

    /// The most memory it held: its cgroup's peak, else the kernel's peak RSS of the process
    /// (`VmHWM`), while it runs.
    pub fn peak(&self) -> Option<u64> {
        self.cgroup.as_ref().and_then(Cgroup::peak).or_else(|| vm_hwm(self.pid))
    }

    /// Its peak RSS (`VmHWM`; the cgroup's peak also counts page cache).
    pub fn peak_rss(&self) -> Option<u64> {
        vm_hwm(self.pid)
    }
}

fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// The scheduler and its executors.
pub struct LocalCluster {
    url: ClusterUrl,
    executors: Vec<Executor>,
    scheduler: tokio::task::JoinHandle<()>,
    work_dir: PathBuf,
}

/// What an executor ended with (read just before it was stopped).
#[derive(Debug, Clone)]
pub struct Stopped {
    /// Its name.
    pub id: String,
    /// Its share of the budget.
    pub share: u64,
    /// Its cgroup's peak (or peak RSS without one).
    pub peak: Option<u64>,
    /// Its peak RSS.
    pub peak_rss: Option<u64>,
}

impl LocalCluster {
    /// Starts the scheduler, then the executors, and waits until each listens. An executor that
    /// exits while starting is an error with the end of its log.
    pub async fn start(options: LocalOptions) -> Result<LocalCluster> {
        let io = |what: String| move |source| Error::Io { what, source };
        let listener = tokio::net::TcpListener::bind((options.host.as_str(), options.port))
            .await
            .map_err(io(format!("binding the scheduler to {}:{}", options.host, options.port)))?;
        let port = listener.local_addr().map_err(io("reading the scheduler's address".into()))?.port();
        let url = ClusterUrl { host: options.host.clone(), port };
        let config = SchedulerConfig::default()
            .with_hostname(options.host.clone())
            .with_port(port)
            .with_scheduler_policy(TaskSchedulingPolicy::PullStaged);
        let cluster = BallistaCluster::new_from_config(&config).await?;
        let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config)).await?;
        let scheduler = tokio::spawn(async move {
            if let Err(e) = start_grpc_service_with_listener(listener, scheduler).await {
                tracing::error!(error = %e, "the Ballista scheduler stopped");
            }
        });
        std::fs::create_dir_all(&options.work_dir).map_err(io(format!("creating {}", options.work_dir.display())))?;
        let mut cluster = LocalCluster { url, executors: Vec::new(), scheduler, work_dir: options.work_dir.clone() };
        let n = options.executors.max(1);
        let share = options.budget / n as u64;
        for i in 1..=n {
            let executor = spawn_executor(&options, &cluster.url, i, share)?;
            cluster.executors.push(executor);
        }
        for e in &mut cluster.executors {
            wait_listening(e, &options.host).await?;
        }
        Ok(cluster)
    }

    /// The scheduler's URL (what `[engine] url` takes).
    pub fn url(&self) -> &ClusterUrl {
        &self.url
    }

    /// The executors.
    pub fn executors(&self) -> &[Executor] {
        &self.executors
    }

    /// An executor that has exited, with how (`None` while all run).
    pub fn exited(&mut self) -> Option<String> {
        self.executors.iter_mut().find_map(|e| match e.child.try_wait() {
            Ok(Some(_)) if e.cgroup.as_ref().is_some_and(|cg| cg.oom_kills() > 0) => Some(format!(
                "{} (pid {}) was killed by the kernel's OOM killer at its cgroup limit of {}",
                e.id,
                e.pid,
                fmt_bytes(e.share)
            )),
            Ok(Some(status)) => Some(format!("{} (pid {}) exited ({status}): {}", e.id, e.pid, log_tail(&e.log))),
            _ => None,
        })
    }

    /// Stops the executors (SIGTERM, then SIGKILL after five seconds) and the scheduler, and
    /// removes the executors' cgroups and work folders; returns each executor's peak.
    pub fn stop(mut self) -> Vec<Stopped> {
        self.stop_all()
    }

    fn stop_all(&mut self) -> Vec<Stopped> {
        let stopped = self
            .executors
            .iter()
            .map(|e| Stopped { id: e.id.clone(), share: e.share, peak: e.peak(), peak_rss: e.peak_rss() })
            .collect();
        for e in &self.executors {
            // SAFETY: kill(2) on our own child's pid; no memory is touched.
            unsafe { libc::kill(e.pid as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for e in &mut self.executors {
            while e.child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = e.child.kill();
                    let _ = e.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(cg) = &mut e.cgroup {
                if let Err(err) = cg.remove() {
                    tracing::warn!(executor = %e.id, error = %err, "could not remove the executor's cgroup");
                }
            }
        }
        self.executors.clear();
        self.scheduler.abort();
        if let Err(e) = std::fs::remove_dir_all(&self.work_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.work_dir.display(), error = %e, "could not remove the cluster's work folder");
            }
        }
        stopped
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if !self.executors.is_empty() {
            self.stop_all();
        }
    }
}

/// A port nothing listens on now (the kernel's choice).
fn free_port(host: &str) -> Result<u16> {
    let l = std::net::TcpListener::bind((host, 0))
        .map_err(|source| Error::Io { what: format!("finding a free port on {host}"), source })?;
    l.local_addr().map(|a| a.port()).map_err(|source| Error::Io { what: "reading a port".into(), source })
}

fn spawn_executor(options: &LocalOptions, url: &ClusterUrl, i: usize, share: u64) -> Result<Executor> {
    let id = format!("executor-{i}");
    let dir = options.work_dir.join(&id);
    std::fs::create_dir_all(&dir)
        .map_err(|source| Error::Io { what: format!("creating {}", dir.display()), source })?;
    let log = dir.join("executor.log");
    let log_file = std::fs::File::create(&log)
        .map_err(|source| Error::Io { what: format!("creating {}", log.display()), source })?;
    let (port, grpc_port) = (free_port(&options.host)?, free_port(&options.host)?);
    let mut cmd = std::process::Command::new(&options.exe);
    cmd.args(&options.args)
        .args(["--memory", &format!("{share}B"), "cluster", "executor", "--scheduler", &url.to_string(), "--id", &id])
        .args(["--host", &options.host, "--port", &port.to_string(), "--grpc-port", &grpc_port.to_string()])
        .args(["--vcores", &options.vcores.max(1).to_string(), "--work-dir", &dir.to_string_lossy()])
        .args(options.ledger_capacity.iter().flat_map(|c| ["--ledger-capacity".to_string(), c.to_string()]))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log_file);
    let cgroup = spillway_isolate::confine(&mut cmd, Confinement::detect(), share)
        .map_err(|source| Error::Io { what: format!("creating {id}'s memory cgroup"), source })?;
    // SAFETY: prctl is async-signal-safe; it runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| Error::Io { what: format!("starting {id}"), source })?;
    Ok(Executor { id, pid: child.id(), share, port, log, child, cgroup })
}

async fn wait_listening(e: &mut Executor, host: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = e.child.try_wait() {
            return Err(Error::Ballista(format!("{} exited while starting ({status}): {}", e.id, log_tail(&e.log))));
        }
        if tokio::net::TcpStream::connect((host, e.port)).await.is_ok() {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err(Error::Ballista(format!(
                "{} did not listen on port {} within {}s: {}",
                e.id,
                e.port,
                READY_TIMEOUT.as_secs(),
                log_tail(&e.log)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last lines of a log, on one line.
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}
