//! Starting an isolated step's child and reading how it ended.
//!
//! The child is `<spillway binary> worker`, its [`StepSpec`] on stdin, its [`StepReport`] on
//! stdout. Between fork and exec it runs only async-signal-safe system calls: `open` + `write`
//! of `0` to its cgroup's `cgroup.procs` (so everything it allocates is charged to and limited
//! by that cgroup), or `setrlimit`. Dropping the future kills the child (and its cgroup goes
//! with it), so a cancelled model leaves no process behind.

use crate::cgroup::Cgroup;
use crate::confine::{Confinement, RLIMIT_SLACK};
use crate::{Error, StepReport, StepSpec};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;

/// How a child ended, when not with exit code 0.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Death {
    /// The kernel's OOM killer killed it at its cgroup's limit.
    OomKilled,
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it.
    Signal(i32),
}

/// What became of a child.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Its pid.
    pub pid: u32,
    /// `cgroup v1`, `cgroup v2` or `rlimit`.
    pub confinement: String,
    /// Its memory limit (cgroup limit, or the budget the rlimit was set from).
    pub limit_bytes: u64,
    /// The most memory its cgroup held (cgroups only).
    pub peak_bytes: Option<u64>,
    /// `None` when it exited with 0.
    pub death: Option<Death>,
    /// Its report, if it wrote one.
    pub report: Option<StepReport>,
    /// The end of what it wrote to stderr.
    pub stderr_tail: String,
}

/// Sets `cmd` up to start confined as `confinement` says with `limit` bytes: a new memory cgroup
/// of that limit (returned: the caller reads its peak and removes it) that the child joins
/// between fork and exec, or `RLIMIT_DATA` of the limit plus slack. Also used for Ballista
/// executors (`spillway-cluster`).
pub fn confine(
    cmd: &mut std::process::Command,
    confinement: &Confinement,
    limit: u64,
) -> std::io::Result<Option<Cgroup>> {
    let cgroup: Option<Cgroup> = match confinement {
        Confinement::Cgroup(h) => Some(h.create(limit)?),
        Confinement::Rlimit { .. } => None,
    };
    match &cgroup {
        Some(cg) => {
            let procs = CString::new(cg.procs_file().as_os_str().as_bytes()).map_err(std::io::Error::other)?;
            // SAFETY: the closure runs in the forked child before exec and only makes
            // async-signal-safe system calls on memory allocated before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if n != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        None => {
            let cap = limit.saturating_add(RLIMIT_SLACK) as libc::rlim_t;
            // SAFETY: as above; setrlimit is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit { rlim_cur: cap, rlim_max: cap };
                    if libc::setrlimit(libc::RLIMIT_DATA, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    }
    Ok(cgroup)
}

/// Runs `spec` in a child of `exe` confined as `confinement` says; `started` is told its pid.
pub async fn run_child(
    exe: &Path,
    spec: &StepSpec,
    confinement: &Confinement,
    started: impl FnOnce(u32),
) -> Result<Outcome, Error> {
    let io = |what: &str| {
        let model = spec.model.clone();
        let what = what.to_string();
        move |source| Error::Io { model, what, source }
    };
    let limit = spec.budget_bytes;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("worker").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).env_remove("SPILLWAY_FAULT");
    let cgroup = confine(&mut cmd, confinement, limit).map_err(io("creating its memory cgroup"))?;
    let json = serde_json::to_vec(spec).map_err(|e| io("writing its spec")(std::io::Error::other(e)))?;
    let mut child = cmd.spawn().map_err(io("starting spillway worker"))?;
    let pid = child.id();
    started(pid);
    // The child is waited for on a thread of its own (its pipes on two more), so the runtime's
    // workers are not held; dropping this future kills it (`KillOnDrop`).
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    std::thread::Builder::new()
        .name("spillway-child".into())
        .spawn(move || {
            if let Some(mut stdin) = stdin {
                // A child that dies at once closes its end: its exit status tells why.
                let _ = stdin.write_all(&json);
            }
            let drain = |pipe: Option<Box<dyn Read + Send>>| {
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    if let Some(mut p) = pipe {
                        let _ = p.read_to_end(&mut buf);
                    }
                    buf
                })
            };
            let out = drain(stdout.map(|p| Box::new(p) as Box<dyn Read + Send>));
            let err = drain(stderr.map(|p| Box::new(p) as Box<dyn Read + Send>));
            let status = child.wait();
            let _ = tx.send((status, out.join().unwrap_or_default(), err.join().unwrap_or_default()));
        })
        .map_err(io("starting a thread to wait for it"))?;
    let mut guard = KillOnDrop { pid, armed: true };
    let (status, stdout, stderr) = rx.await.map_err(|_| io("waiting for it")(std::io::Error::other("lost")))?;
    guard.armed = false;
    let status = status.map_err(io("waiting for it"))?;
    let (peak, oom_kills) = match &cgroup {
        Some(cg) => (cg.peak(), cg.oom_kills()),
        None => (None, 0),
    };
    let death = if status.success() {
        None
    } else if oom_kills > 0 && status.signal() == Some(libc::SIGKILL) {
        Some(Death::OomKilled)
    } else if let Some(sig) = status.signal() {
        Some(Death::Signal(sig))
    } else {
        Some(Death::Exited(status.code().unwrap_or(-1)))
    };
    if let Some(mut cg) = cgroup {
        cg.remove().map_err(io("removing its memory cgroup"))?;
    }
    let report = String::from_utf8_lossy(&stdout)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str::<StepReport>(l).ok());
    let stderr = String::from_utf8_lossy(&stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let stderr_tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    Ok(Outcome {
        pid,
        confinement: confinement.name(),
        limit_bytes: limit,
        peak_bytes: peak,
        death,
        report,
        stderr_tail,
    })
}

/// Kills the child if the future waiting for it is dropped (the model was cancelled); the
/// waiting thread then reaps it.
struct KillOnDrop {
    pid: u32,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            // SAFETY: kill(2) on our own child, not yet reaped (the waiting thread reaps it).
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }
}
