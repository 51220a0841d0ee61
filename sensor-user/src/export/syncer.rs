//! fsync off the record pipeline: the agent writes a batch to the spool and
//! hands the tail segment to this thread to make durable, so the task that
//! drains the kernel's ring buffer never waits for the disk. Requests
//! coalesce: one waiting request covers everything written before it runs.

use std::{
    fs::File,
    sync::mpsc::{self, SyncSender, TrySendError},
};

use tracing::error;

/// The fsync thread's inbox.
pub struct Syncer {
    tx: SyncSender<File>,
}

impl Syncer {
    /// Starts the thread (it ends with the process).
    pub fn start() -> std::io::Result<Syncer> {
        let (tx, rx) = mpsc::sync_channel::<File>(1);
        std::thread::Builder::new()
            .name("spool-fsync".into())
            .spawn(move || {
                for f in rx {
                    if let Err(e) = f.sync_data() {
                        error!(error = %e, "fsync of the spool failed; records written since the last fsync survive a crash of sensord but not a power loss");
                    }
                }
            })?;
        Ok(Syncer { tx })
    }

    /// Asks for `f` to be synced; a request already waiting covers it.
    pub fn request(&self, f: File) {
        match self.tx.try_send(f) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => {
                error!("the spool's fsync thread is gone; records are not made durable");
            }
        }
    }
}
