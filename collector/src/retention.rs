//! The retention task (`collectord --retain 400d`): every `--retain-every`
//! it removes, host by host, records older than the retention (whole signed
//! windows only; see `store::retention`), and logs what went.

use std::{sync::Arc, time::Duration};

use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

use crate::store::Store;

/// Records removed per transaction, about (whole windows: a window larger
/// than this goes in one).
const STEP: i64 = 50_000;

/// Runs a pass now and every `every` until `stop` turns true.
pub async fn run(
    store: Arc<Mutex<Store>>,
    retain: Duration,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    info!(
        retain_s = retain.as_secs(),
        every_s = every.as_secs(),
        "retention on: records older than the retention are removed, whole signed windows at a time"
    );
    loop {
        pass(&store, retain).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One pass over every host; each host in a transaction of its own, so
/// ingest waits for one host's removal at most.
async fn pass(store: &Mutex<Store>, retain: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let cutoff = now.saturating_sub(retain.as_nanos().min(i64::MAX as u128) as i64);
    let hosts = match store.lock().await.host_names().await {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, "retention: listing the hosts failed; trying again at the next pass");
            return;
        }
    };
    for host in hosts {
        // A step at a time: the store is free for ingest between steps.
        let (mut records, mut upto) = (0, 0);
        loop {
            match store.lock().await.retain(&host, cutoff, STEP).await {
                Ok(Some(r)) if r.records > 0 => {
                    records += r.records;
                    upto = r.upto_seq;
                }
                Ok(_) => break,
                Err(e) => {
                    warn!(host = %host, error = %e, "retention: removing old records failed; trying again at the next pass");
                    break;
                }
            }
        }
        if records > 0 {
            info!(
                host = %host,
                upto_seq = upto,
                records,
                "retention removed records older than the retention"
            );
        }
    }
}
