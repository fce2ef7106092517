//! One Ballista executor (`spillway cluster executor`, started by [`crate::local`] or by hand on
//! another machine): its DataFusion memory pool is a spillway lease of its whole share, so every
//! task it runs reserves from the executor's budget (and, through the governor's ledger, from
//! the machine's), sorts and aggregates spill into its work folder, and pressure measured by
//! jemalloc makes them spill early, as in a local run.

use crate::Result;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use spillway_governor::{fmt_bytes, Governor, GovernorConfig, LeaseRequest, PoolOptions};
use spillway_project::ClusterUrl;
use std::path::PathBuf;
use std::sync::Arc;

/// How one executor runs.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// Its name in the scheduler (`executor-1`).
    pub id: String,
    /// The scheduler it registers with.
    pub scheduler: ClusterUrl,
    /// The address it binds and advertises.
    pub host: String,
    /// Its Arrow Flight port (results and shuffle data are fetched here).
    pub port: u16,
    /// Its gRPC port.
    pub grpc_port: u16,
    /// Tasks at once.
    pub vcores: usize,
    /// Its budget (its share of the cluster's): the pool is what may be lent of it.
    pub governor: GovernorConfig,
    /// Share of the pool kept for consumers that cannot spill.
    pub unspillable_reserve: f64,
    /// Shuffle files and spills (made if missing; the caller removes it).
    pub work_dir: PathBuf,
}

/// Runs the executor until it is told to stop (SIGTERM, Ctrl-C, or the scheduler).
pub async fn serve(options: ExecutorOptions) -> Result<()> {
    std::fs::create_dir_all(&options.work_dir)
        .map_err(|source| crate::Error::Io { what: format!("creating {}", options.work_dir.display()), source })?;
    let governor = Governor::new(options.governor.clone())?;
    let lease = governor.lease(LeaseRequest::bytes(options.id.clone(), governor.leasable()).heavy()).await?;
    let pool = lease.into_pool(PoolOptions {
        step: Some(format!("ballista {}", options.id)),
        unspillable_reserve: options.unspillable_reserve,
        pressure_aware: true,
        grow_to: None,
    });
    eprintln!(
        "{}: pool {} of a {} budget, {} task(s) at once, registering with {}",
        options.id,
        fmt_bytes(pool.lease_bytes()),
        fmt_bytes(governor.budget()),
        options.vcores,
        options.scheduler
    );
    let spill_dir = options.work_dir.join("spill");
    let runtime_pool = pool.clone();
    let config = ExecutorProcessConfig {
        executor_id: options.id.clone(),
        bind_host: options.host.clone(),
        external_host: Some(options.host.clone()),
        port: options.port,
        grpc_port: options.grpc_port,
        scheduler_host: options.scheduler.host.clone(),
        scheduler_port: options.scheduler.port,
        scheduler_connect_timeout_seconds: 10,
        vcores: options.vcores.max(1),
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir: Some(options.work_dir.to_string_lossy().into_owned()),
        grpc_max_decoding_message_size: crate::GRPC_MESSAGE_LIMIT as u32,
        grpc_max_encoding_message_size: crate::GRPC_MESSAGE_LIMIT as u32,
        // 0: no pool of Ballista's own; every task's runtime takes the lease's pool below.
        memory_pool_size: Some(0),
        override_runtime_producer: Some(Arc::new(move |_| {
            RuntimeEnvBuilder::new()
                .with_memory_pool(runtime_pool.clone())
                .with_temp_file_path(spill_dir.clone())
                .build_arc()
        })),
        ..ExecutorProcessConfig::default()
    };
    let result = start_executor_process(Arc::new(config)).await;
    drop(pool);
    drop(governor);
    Ok(result?)
}
