//! What the benchmarks share (`sensor-bench`, `agent-bench`): worker processes
//! that connect on request, the local destination and its sink, and order
//! statistics for the report. A benchmark binary that starts workers must
//! answer `BIN worker ADDR` with [`worker::serve`].

pub mod net;
pub mod process;
pub mod progstats;
pub mod sides;
pub mod stats;
pub mod worker;
