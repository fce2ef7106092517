//! The client side: whether a scheduler answers, a session whose queries run on it, and what
//! Ballista reports of a finished job.

use crate::{Error, Result};
use ballista::prelude::SessionContextExt;
use ballista_core::execution_plans::DistributedQueryExec;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::protobuf::LogicalPlanNode;
use spillway_project::ClusterUrl;
use std::sync::Arc;
use std::time::Duration;

/// How long [`check`] waits for the scheduler to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the scheduler at `url` (and lets go): `Err(Error::Down)` names the URL and why.
pub async fn check(url: &ClusterUrl) -> Result<()> {
    let down = |why: String| Error::Down { url: url.clone(), why };
    match tokio::time::timeout(CONNECT_TIMEOUT, SchedulerGrpcClient::connect(url.endpoint())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(down(causes(&e))),
        Err(_) => Err(down(format!("no answer in {}s", CONNECT_TIMEOUT.as_secs()))),
    }
}

/// An error with its causes, `a: b: c` (tonic's own message is only "transport error").
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// A session whose queries are planned here and run on the cluster at `url` as Ballista job
/// `job_name`, with Ballista's own defaults (16 shuffle partitions: the cluster's cores, not
/// this machine's, are what matters, and more partitions make each task's state smaller). What
/// the client itself holds (the rows as they come back) is reserved from `pool`.
pub async fn session(url: &ClusterUrl, pool: Arc<dyn MemoryPool>, job_name: &str) -> Result<SessionContext> {
    let runtime = RuntimeEnvBuilder::new().with_memory_pool(pool).build_arc()?;
    let config = SessionConfig::new_with_ballista()
        .with_ballista_job_name(job_name)
        .with_ballista_grpc_client_max_message_size(crate::GRPC_MESSAGE_LIMIT);
    let state =
        SessionStateBuilder::new().with_config(config).with_runtime_env(runtime).with_default_features().build();
    Ok(SessionContext::remote_with_state(&url.to_string(), state).await?)
}

/// What Ballista reports of a job that ran (read from the plan after its stream is drained).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobInfo {
    /// The scheduler's job id.
    pub job_id: String,
    /// Queued until started on the cluster, milliseconds.
    pub scheduling_ms: u64,
    /// Started until finished on the cluster, milliseconds.
    pub execution_ms: u64,
    /// Submitted until the last row arrived here, milliseconds.
    pub total_ms: u64,
    /// Bytes of results fetched from the executors.
    pub transferred_bytes: u64,
}

/// The Ballista job `plan` ran as (`None` when it ran no job: a local plan).
pub fn job(plan: &Arc<dyn ExecutionPlan>) -> Option<JobInfo> {
    if let Some(exec) = plan.downcast_ref::<DistributedQueryExec<LogicalPlanNode>>() {
        let metrics = exec.metrics().unwrap_or_default();
        let value = |name: &str| metrics.sum_by_name(name).map_or(0, |v| v.as_usize() as u64);
        return Some(JobInfo {
            job_id: exec.job_id()?.to_string(),
            scheduling_ms: value("job_scheduling_in_ms"),
            execution_ms: value("job_execution_time_ms"),
            total_ms: value("total_query_time_ms"),
            transferred_bytes: value("transferred_bytes"),
        });
    }
    plan.children().into_iter().find_map(job)
}

/// The job `plan` runs as, cancelled on the scheduler when this is dropped before
/// [`JobGuard::finish`] (the model was cancelled, or failed here while the job ran): Ballista
/// itself goes on with a job whose client went away.
pub struct JobGuard {
    url: ClusterUrl,
    plan: Arc<dyn ExecutionPlan>,
    done: bool,
}

impl JobGuard {
    /// Watches the job of `plan` (submitted when its stream is first polled).
    pub fn new(url: &ClusterUrl, plan: Arc<dyn ExecutionPlan>) -> Self {
        Self { url: url.clone(), plan, done: false }
    }

    /// The job's figures so far (all of them once its rows are all read).
    pub fn info(&self) -> Option<JobInfo> {
        job(&self.plan)
    }

    /// Its rows are all read: it is not cancelled.
    pub fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        let Some(info) = job(&self.plan).filter(|_| !self.done) else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let endpoint = self.url.endpoint();
        runtime.spawn(async move {
            let params = ballista_core::serde::protobuf::CancelJobParams { job_id: info.job_id.clone() };
            match SchedulerGrpcClient::connect(endpoint).await {
                Ok(mut scheduler) => {
                    if let Err(e) = scheduler.cancel_job(params).await {
                        tracing::warn!(job = %info.job_id, error = %e, "could not cancel the Ballista job");
                    }
                }
                Err(e) => {
                    tracing::warn!(job = %info.job_id, error = %e, "could not reach the scheduler to cancel the job")
                }
            }
        });
    }
}
