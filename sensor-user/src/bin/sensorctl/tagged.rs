//! `sensorctl tagged`, `tag`, `untag`.

use residency_proto::agent::v1::{ListTaggedRequest, TagProcessRequest, UntagProcessRequest};

use crate::{Global, client, output};

pub async fn list(g: &Global) -> i32 {
    let Some(mut c) = client::connect(g).await else {
        return 2;
    };
    let r = match c.list_tagged(ListTaggedRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(e) => return client::fail("tagged", e),
    };
    if g.machine() {
        output::list(&r.processes);
        return 0;
    }
    let rows: Vec<Vec<String>> = r
        .processes
        .iter()
        .map(|p| {
            let why: Vec<&str> = p.reasons.iter().map(|x| x.why.as_str()).collect();
            vec![
                p.pid.to_string(),
                p.classes.join(","),
                why.join("; "),
                p.exe.clone(),
                p.cmdline.chars().take(60).collect(),
            ]
        })
        .collect();
    output::table(&["PID", "CLASSES", "WHY", "EXE", "CMDLINE"], &rows);
    0
}

pub async fn tag(g: &Global, pid: u32, class: String, add: bool) -> i32 {
    let Some(mut c) = client::connect(g).await else {
        return 2;
    };
    let res = if add {
        c.tag_process(TagProcessRequest {
            pid,
            class: class.clone(),
        })
        .await
        .map(|_| ())
    } else {
        c.untag_process(UntagProcessRequest {
            pid,
            class: class.clone(),
        })
        .await
        .map(|_| ())
    };
    match res {
        Ok(()) => {
            println!(
                "{} pid {pid} {} {class}",
                if add { "tagged" } else { "untagged" },
                if add { "with" } else { "from" }
            );
            0
        }
        Err(e) => client::fail(if add { "tag" } else { "untag" }, e),
    }
}
