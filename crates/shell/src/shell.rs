//! One shell session: a [`SessionContext`] under a lease, the display settings, and the one path
//! every statement and command takes, whether it came from an argument, a file, standard input
//! or a terminal.

use crate::error::{Error, Result};
use crate::format::{self, Format};
use crate::interrupt::Interrupts;
use crate::meta::{self, Command};
use crate::script::{self, Item, Kind};
use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::runtime::SpawnedTask;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use indicatif::ProgressBar;
use spillway_engine::output;
use spillway_engine::query::{self, JoinReport};
use spillway_governor::{fmt_bytes, Governor, LeasePool};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a statement's result goes.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Printed in the shell's format.
    Print,
    /// Written to a file (its format from its extension), published atomically.
    File(&'a Path),
    /// Only counted, with an order-independent checksum printed (to compare engines).
    Checksum,
}

/// What one statement did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Rows of its result.
    pub rows: u64,
    /// From planning to the last row.
    pub elapsed: Duration,
    /// Highest anonymous resident memory of the process while it ran (what the budget governs).
    pub peak_resident: u64,
    /// Highest process RSS while it ran.
    pub peak_rss: u64,
    /// Bytes its operators spilled.
    pub spilled: u64,
    /// Its hash joins: in memory or out of core, buckets, depth.
    pub joins: Vec<JoinReport>,
    /// Bytes written, for [`Target::File`].
    pub output_bytes: Option<u64>,
    /// The checksum, for [`Target::Checksum`].
    pub checksum: Option<String>,
    /// Whether it returned columns (`SET`, `CREATE ...` do not, and get no status line).
    pub has_columns: bool,
}

/// How long a cancelled statement's operators get to give their memory back before the shell
/// goes on regardless.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// Whether the shell goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next statement.
    Continue,
    /// Leave (`.quit`).
    Quit,
}

/// A live progress display for a running statement (the binary's spinner with memory figures).
pub type Progress = Box<dyn Fn() -> Option<ProgressBar>>;

/// A shell session. See the [module docs](self).
pub struct Shell {
    ctx: SessionContext,
    governor: Governor,
    pool: Option<Arc<LeasePool>>,
    budget: u64,
    /// How results are printed.
    pub format: Format,
    /// Rows a table shows (0: all, printed as they arrive).
    pub max_rows: usize,
    /// Whether a status line follows each statement (on stderr).
    pub timing: bool,
    progress: Option<Progress>,
    /// What must live as long as the session (a project's views, whose state is charged to the
    /// lease).
    keep: Vec<Box<dyn std::any::Any>>,
    /// Ctrl-C, caught for the whole session: it cancels the running statement instead of
    /// ending the process.
    interrupts: Option<Interrupts>,
}

impl Shell {
    /// A session on `ctx`, whose memory pool is `pool` (spillway's lease) or a stock pool of
    /// `budget` bytes (`pool` = `None`).
    pub fn new(ctx: SessionContext, governor: Governor, pool: Option<Arc<LeasePool>>, budget: u64) -> Shell {
        Shell {
            ctx,
            governor,
            pool,
            budget,
            format: Format::Table,
            max_rows: 40,
            timing: true,
            progress: None,
            keep: Vec::new(),
            interrupts: Interrupts::catch(),
        }
    }

    /// The session's context (to register tables).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The governor the session's lease came from.
    pub fn governor(&self) -> &Governor {
        &self.governor
    }

    /// Shows `progress` while a statement runs.
    pub fn set_progress(&mut self, progress: Progress) {
        self.progress = Some(progress);
    }

    /// Keeps `value` alive as long as the session.
    pub(crate) fn keep(&mut self, value: Box<dyn std::any::Any>) {
        self.keep.push(value);
    }

    /// Runs every statement and command of `text` in order (from `origin`: a file's path,
    /// `<stdin>` or `<argument>`), stopping at the first error, which names `origin` and the
    /// statement's line. The last statement's result goes to `last`, the others' are printed.
    /// Returns the last statement's outcome.
    pub async fn run_script(
        &mut self,
        origin: &str,
        text: &str,
        last: Target<'_>,
        out: &mut dyn Write,
    ) -> Result<Option<Outcome>> {
        let items = script::split(text);
        let last_sql = items.iter().rposition(|i| i.kind == Kind::Sql);
        let mut outcome = None;
        for (i, item) in items.iter().enumerate() {
            let at =
                |source: Error| Error::Statement { origin: origin.into(), line: item.line, source: Box::new(source) };
            match item.kind {
                Kind::Command => {
                    if self.command(&item.text, out).await.map_err(at)? == Flow::Quit {
                        break;
                    }
                }
                Kind::Sql => {
                    let target = if Some(i) == last_sql { last } else { Target::Print };
                    outcome = Some(self.execute(item, target, out).await.map_err(at)?);
                }
            }
        }
        Ok(outcome)
    }

    /// Runs what was typed at the terminal: every item, each error printed and the next item
    /// run. Returns whether to leave.
    pub(crate) async fn run_typed(&mut self, text: &str, out: &mut dyn Write) -> Flow {
        for item in script::split(text) {
            let result = match item.kind {
                Kind::Command => self.command(&item.text, out).await,
                Kind::Sql => self.execute(&item, Target::Print, out).await.map(|_| Flow::Continue),
            };
            let _ = out.flush();
            match result {
                Ok(Flow::Quit) => return Flow::Quit,
                Ok(Flow::Continue) => {}
                Err(e) if e.is_interrupted() => eprintln!("cancelled"),
                Err(e) => eprintln!("error: {e}"),
            }
        }
        Flow::Continue
    }

    /// Plans and runs one SQL statement under the session's lease (the same guard and errors as
    /// every other path: [`query::run_sql`]); Ctrl-C cancels it.
    ///
    /// The statement's batches are pulled by a task of their own and handed over a small
    /// channel, so this future waits on the channel and on Ctrl-C, never inside an operator;
    /// cancelling drops the task, which stops the operators at their next yield and removes
    /// their spill files.
    pub async fn execute(&mut self, item: &Item, target: Target<'_>, out: &mut dyn Write) -> Result<Outcome> {
        let started = Instant::now();
        self.governor.sample_now();
        let from_ms = self.governor.timeline().now_ms();
        let reserved_before = self.pool.as_ref().map(|p| {
            p.reset_peak();
            p.stats().reserved
        });
        let bar = self.progress.as_ref().and_then(|p| p());
        let (format, max_rows) = (self.format, (self.max_rows > 0).then_some(self.max_rows));
        let ctx = self.ctx.clone();
        let sql = item.positioned();
        let shown = bar.clone();
        let work = async move {
            let q = query::run_sql(&ctx, &sql).await?;
            let plan = q.plan.clone();
            let (stream, _pump) = pumped(q.stream);
            // The spinner gives way to the first rows.
            let stream = clear_on_first_batch(stream, shown);
            let mut outcome = Outcome { has_columns: !stream.schema().fields().is_empty(), ..Outcome::default() };
            match target {
                Target::Checksum => {
                    let (rows, sum) = output::checksum(stream).await?;
                    writeln!(out, "{rows} rows, checksum {sum}").map_err(|e| Error::io("<stdout>", e))?;
                    (outcome.rows, outcome.checksum) = (rows, Some(sum));
                }
                Target::File(path) => {
                    let w = output::write_stream(stream, path, &output::WriteOptions::default()).await?;
                    (outcome.rows, outcome.output_bytes) = (w.rows, Some(w.bytes));
                }
                // A statement without columns (SET, CREATE ...) prints nothing.
                Target::Print if !outcome.has_columns => outcome.rows = format::drain(stream, |_| Ok(())).await?,
                Target::Print => outcome.rows = format::write(stream, format, max_rows, out).await?,
            }
            outcome.spilled = query::spilled_bytes(&plan);
            outcome.joins = query::join_reports(&plan);
            Ok::<_, Error>(outcome)
        };
        let result = match self.interrupts.as_mut() {
            Some(interrupts) => {
                // A Ctrl-C from before this statement (say, while the last result printed) is
                // not for it.
                interrupts.forget();
                tokio::select! {
                    r = work => r,
                    _ = interrupts.next() => Err(Error::Interrupted),
                }
            }
            None => work.await,
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if let (Err(Error::Interrupted), Some(pool), Some(before)) = (&result, &self.pool, reserved_before) {
            // Cancelled: its operators stop at their next yield; the statement is over when
            // they have given their memory back to the lease (or after a few seconds at most).
            let waited = Instant::now();
            while pool.stats().reserved > before && waited.elapsed() < CANCEL_GRACE {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let mut outcome = result?;
        self.governor.sample_now();
        let to_ms = self.governor.timeline().now_ms();
        (outcome.peak_resident, outcome.peak_rss) = self.governor.timeline().peak_between(from_ms, to_ms);
        outcome.elapsed = started.elapsed();
        if self.timing && outcome.has_columns {
            eprintln!("{}", self.status_line(&outcome, target));
        }
        Ok(outcome)
    }

    /// `N rows in 0.12s · peak resident 80MiB (RSS 95MiB) of 1GiB budget · spilled 0B`, and the
    /// joins that went out of core.
    pub fn status_line(&self, o: &Outcome, target: Target<'_>) -> String {
        let out_of_core: Vec<&JoinReport> = o.joins.iter().filter(|j| j.out_of_core_partitions > 0).collect();
        let joins = match out_of_core.len() {
            0 => String::new(),
            n => format!(
                " · {n} join(s) out of core ({} buckets, depth {})",
                out_of_core.iter().map(|j| j.buckets).sum::<usize>(),
                out_of_core.iter().map(|j| j.max_depth).max().unwrap_or(0)
            ),
        };
        let wrote = match target {
            Target::File(p) => format!(" · wrote {}", p.display()),
            _ => String::new(),
        };
        let lease = self.pool.as_ref().map_or(String::new(), |p| {
            let s = p.stats();
            format!(" · lease {} reserved at most {}", fmt_bytes(p.lease_bytes()), fmt_bytes(s.peak_reserved))
        });
        format!(
            "{} row{} in {:.2}s · peak resident {} (RSS {}) of {} budget{lease} · spilled {}{joins}{wrote}",
            o.rows,
            if o.rows == 1 { "" } else { "s" },
            o.elapsed.as_secs_f64(),
            fmt_bytes(o.peak_resident),
            fmt_bytes(o.peak_rss),
            fmt_bytes(self.budget),
            fmt_bytes(o.spilled),
        )
    }

    /// Runs a shell command (`.tables`, `\d NAME`, ...).
    pub async fn command(&mut self, line: &str, out: &mut dyn Write) -> Result<Flow> {
        let io = |e: std::io::Error| Error::io("<stdout>", e);
        match meta::parse(line)? {
            Command::Tables => {
                let mut names = Vec::new();
                let mut columns = Vec::new();
                for (name, schema) in self.tables().await? {
                    names.push(name);
                    columns.push(schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "));
                }
                self.print_rows(&["table", "columns"], vec![names, columns], out).await?;
            }
            Command::Schema(name) => {
                let tables = match name {
                    Some(n) => {
                        let provider = self
                            .ctx
                            .table_provider(n.as_str())
                            .await
                            .map_err(|_| Error::Command(format!("no table {n:?} (.tables lists them)")))?;
                        vec![(n, provider.schema())]
                    }
                    None => self.tables().await?,
                };
                let mut cols: Vec<Vec<String>> = vec![Vec::new(); 4];
                for (table, schema) in tables {
                    for f in schema.fields() {
                        cols[0].push(table.clone());
                        cols[1].push(f.name().clone());
                        cols[2].push(f.data_type().to_string());
                        cols[3].push(if f.is_nullable() { "YES" } else { "NO" }.to_string());
                    }
                }
                self.print_rows(&["table", "column", "type", "nullable"], cols, out).await?;
            }
            Command::Timing(on) => {
                self.timing = on.unwrap_or(!self.timing);
                writeln!(out, "timing is {}", if self.timing { "on" } else { "off" }).map_err(io)?;
            }
            Command::Format(f) => self.format = f,
            Command::MaxRows(n) => self.max_rows = n,
            Command::Help => writeln!(out, "{}", meta::HELP).map_err(io)?,
            Command::Quit => return Ok(Flow::Quit),
        }
        Ok(Flow::Continue)
    }

    /// Every table of the session (all catalogs and schemas but `information_schema`), sorted,
    /// with its columns.
    pub async fn tables(&self) -> Result<Vec<(String, arrow::datatypes::SchemaRef)>> {
        let defaults = {
            let state = self.ctx.state();
            let o = &state.config().options().catalog;
            (o.default_catalog.clone(), o.default_schema.clone())
        };
        let mut out = Vec::new();
        for catalog_name in self.ctx.catalog_names() {
            let Some(catalog) = self.ctx.catalog(&catalog_name) else { continue };
            for schema_name in catalog.schema_names() {
                if schema_name == "information_schema" {
                    continue;
                }
                let Some(schema) = catalog.schema(&schema_name) else { continue };
                for table in schema.table_names() {
                    let Ok(Some(provider)) = schema.table(&table).await else { continue };
                    let name = if (catalog_name.as_str(), schema_name.as_str()) == (&defaults.0, &defaults.1) {
                        table
                    } else {
                        format!("{catalog_name}.{schema_name}.{table}")
                    };
                    out.push((name, provider.schema()));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Names to complete at the terminal: tables and their columns.
    pub(crate) async fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for (table, schema) in self.tables().await.unwrap_or_default() {
            names.extend(schema.fields().iter().map(|f| f.name().clone()));
            names.push(table);
        }
        names.sort();
        names.dedup();
        names
    }

    /// Prints string columns in the session's format.
    async fn print_rows(&self, headers: &[&str], columns: Vec<Vec<String>>, out: &mut dyn Write) -> Result<()> {
        let schema =
            Arc::new(Schema::new(headers.iter().map(|h| Field::new(*h, DataType::Utf8, false)).collect::<Vec<_>>()));
        let arrays: Vec<ArrayRef> = columns.into_iter().map(|c| Arc::new(StringArray::from(c)) as ArrayRef).collect();
        let batch = RecordBatch::try_new(schema.clone(), arrays)?;
        let stream: SendableRecordBatchStream =
            Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::iter([Ok(batch)])));
        format::write(stream, self.format, None, out).await?;
        Ok(())
    }
}

/// `stream`, pulled by a task of its own into a channel of two batches; the task (aborted when
/// dropped) must outlive the returned stream.
fn pumped(mut stream: SendableRecordBatchStream) -> (SendableRecordBatchStream, SpawnedTask<()>) {
    let schema = stream.schema();
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let pump = SpawnedTask::spawn(async move {
        while let Some(batch) = stream.next().await {
            if tx.send(batch).await.is_err() {
                break;
            }
        }
    });
    let batches = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    (Box::pin(RecordBatchStreamAdapter::new(schema, batches)), pump)
}

/// `stream`, clearing `bar` when its first batch (or its end) arrives.
fn clear_on_first_batch(stream: SendableRecordBatchStream, bar: Option<ProgressBar>) -> SendableRecordBatchStream {
    let Some(bar) = bar else { return stream };
    let schema = stream.schema();
    let mut bar = Some(bar);
    let cleared = stream.map(move |b| {
        if let Some(bar) = bar.take() {
            bar.finish_and_clear();
        }
        b
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, cleared))
}
