//! fsync off the record pipeline: the agent writes a batch to the spool and
//! hands the tail segment to this thread to make durable, so the task that
//! drains the kernel's ring buffer never waits for the disk. Requests
//! coalesce: one waiting request covers everything written before it runs.

use std::{
    fs::File,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, SyncSender, TrySendError},
    },
};

use tracing::error;

/// The fsync thread's inbox, and how far it got.
pub struct Syncer {
    tx: SyncSender<(File, u64)>,
    synced: Arc<AtomicU64>,
}

impl Syncer {
    /// Starts the thread (it ends with the process).
    pub fn start() -> std::io::Result<Syncer> {
        let (tx, rx) = mpsc::sync_channel::<(File, u64)>(1);
        let synced = Arc::new(AtomicU64::new(0));
        let done = synced.clone();
        std::thread::Builder::new()
            .name("spool-fsync".into())
            .spawn(move || {
                for (f, upto) in rx {
                    match f.sync_data() {
                        Ok(()) => {
                            done.fetch_max(upto, Ordering::AcqRel);
                        }
                        Err(e) => error!(error = %e, "fsync of the spool failed; records written since the last fsync survive a crash of sensord but not a power loss, and are not delivered until a sync succeeds"),
                    }
                }
            })?;
        Ok(Syncer { tx, synced })
    }

    /// The highest sequence a finished fsync covers.
    pub fn synced(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    /// Asks for `f` to be synced, covering the records up to `upto` (written
    /// before the request); a request already waiting covers the file, and
    /// the next request records the sequence.
    pub fn request(&self, f: File, upto: u64) {
        match self.tx.try_send((f, upto)) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => {
                error!("the spool's fsync thread is gone; records are not made durable");
            }
        }
    }
}
