//! Ctrl-C during a statement. SIGINT is caught for the whole session by a thread of its own
//! (with a one-thread tokio runtime for the signal), because the session's runtime may have
//! every thread busy in an operator that does not yield for seconds: its own signal driver
//! would hear the signal only then. The thread bumps a counter on a watch channel; a statement
//! waits on the channel beside its work, so it is cancelled at once.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// The session's view of Ctrl-C presses.
#[derive(Clone)]
pub(crate) struct Interrupts {
    presses: watch::Receiver<u64>,
}

impl Interrupts {
    /// Catches SIGINT from now on (a Ctrl-C no longer ends the process). `None` if the signal
    /// cannot be caught; Ctrl-C then ends the process as usual.
    pub(crate) fn catch() -> Option<Interrupts> {
        let (tx, presses) = watch::channel(0u64);
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("spillway-sigint".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(_) => {
                        let _ = ready_tx.send(false);
                        return;
                    }
                };
                runtime.block_on(async move {
                    let Ok(mut sigint) = signal(SignalKind::interrupt()) else {
                        let _ = ready_tx.send(false);
                        return;
                    };
                    let _ = ready_tx.send(true);
                    loop {
                        tokio::select! {
                            got = sigint.recv() => match got {
                                Some(()) => tx.send_modify(|n| *n += 1),
                                None => return,
                            },
                            // Every session is gone.
                            _ = tx.closed() => return,
                        }
                    }
                })
            })
            .ok()?;
        ready.recv().ok().filter(|ok| *ok).map(|_| Interrupts { presses })
    }

    /// Forgets presses so far (one from before a statement is not for it).
    pub(crate) fn forget(&mut self) {
        self.presses.mark_unchanged();
    }

    /// Waits for the next press.
    pub(crate) async fn next(&mut self) {
        if self.presses.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
