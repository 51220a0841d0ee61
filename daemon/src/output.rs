//! The CLIs' `-o table|wide|json|jsonl`: one output option for both
//! (`sensorctl`, `collectorctl`), set once per run; tables are each
//! command's own, JSON is the API's canonical mapping (enum names, 64-bit
//! integers as strings).

use std::sync::OnceLock;

use serde::Serialize;

/// `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    /// A table with more columns.
    Wide,
    Json,
    /// One JSON object per line.
    Jsonl,
}

static FORMAT: OnceLock<Format> = OnceLock::new();

/// Sets the format for this run (once, at start).
pub fn set(f: Format) {
    let _ = FORMAT.set(f);
}

/// The format of this run.
pub fn format() -> Format {
    FORMAT.get().copied().unwrap_or(Format::Table)
}

fn print_json<T: Serialize>(v: &T, pretty: bool) {
    let s = if pretty {
        serde_json::to_string_pretty(v)
    } else {
        serde_json::to_string(v)
    };
    match s {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: encoding JSON: {e}"),
    }
}

/// Prints one object: pretty for json, one line for jsonl.
pub fn json<T: Serialize>(v: &T) {
    print_json(v, format() != Format::Jsonl);
}

/// Prints a list: a pretty array for json, one line per item for jsonl.
pub fn list<T: Serialize>(items: &[T]) {
    if format() == Format::Jsonl {
        for i in items {
            print_json(i, false);
        }
    } else {
        print_json(&items, true);
    }
}
