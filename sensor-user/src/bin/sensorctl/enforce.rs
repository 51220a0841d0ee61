//! `sensorctl enforce on|off|monitor`.

use residency_proto::agent::v1::{Mode, SetEnforcementRequest};

use crate::{Global, client, output, status::mode_name};

/// What to switch to.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Switch {
    /// Enforce: deny violations (EPERM before any packet).
    On,
    /// Off: nothing judged or reported.
    Off,
    /// Monitor: report violations only.
    Monitor,
}

pub async fn run(g: &Global, switch: Switch, class: Option<String>, reason: String) -> i32 {
    let Some(mut c) = client::connect(g).await else {
        return 2;
    };
    let mode = match switch {
        Switch::On => Mode::Enforce,
        Switch::Off => Mode::Off,
        Switch::Monitor => Mode::Monitor,
    };
    let req = SetEnforcementRequest {
        class: class.unwrap_or_default(),
        mode: mode as i32,
        reason,
    };
    match c.set_enforcement(req).await {
        Ok(r) => {
            let r = r.into_inner();
            if g.machine() {
                output::list(&r.modes);
            } else {
                let rows: Vec<Vec<String>> = r
                    .modes
                    .iter()
                    .map(|m| vec![m.class.clone(), mode_name(m.mode).into()])
                    .collect();
                output::table(&["CLASS", "MODE"], &rows);
            }
            0
        }
        Err(e) => client::fail("enforce", e),
    }
}
