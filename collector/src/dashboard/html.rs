//! HTML pieces: escaping (everything a record carries came from a host and
//! is treated as hostile), the page frame, query strings, the stylesheet.

use std::fmt::Write;

use axum::{
    http::header,
    response::{Html, IntoResponse, Response},
};

use crate::auth::Caller;

/// `s` safe inside HTML text and double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `s` percent-encoded for a query string value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// `?k=v&…` of the non-empty pairs ("" when none).
pub fn query(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", url_encode(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&amp;"))
    }
}

/// A time as "2026-11-30 07:00:00Z" ("—" for none).
pub fn time(ns: i64) -> String {
    if ns <= 0 {
        return "—".into();
    }
    residency_proto::time::utc(ns).replace('T', " ")
}

/// The frame of every page: title, navigation, who is looking.
pub fn page(title: &str, who: Option<&Caller>, active: &str, body: &str) -> Response {
    let nav = [
        ("/", "Hosts"),
        ("/violations", "Violations"),
        ("/audit", "Audit trail"),
    ]
    .iter()
    .map(|(href, label)| {
        let class = if *href == active {
            " class=\"active\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{class}>{label}</a>")
    })
    .collect::<String>();
    let user = match who {
        Some(Caller::Auditor { name }) => format!("{} · auditor", esc(name)),
        Some(Caller::Operator { name }) => format!("{} · operator", esc(name)),
        _ => String::new(),
    };
    let logout = if who.is_some() {
        "<form method=\"post\" action=\"/logout\" class=\"logout\"><button type=\"submit\">Log out</button></form>"
    } else {
        ""
    };
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · Residency Sensor</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head>\
<body><header><span class=\"brand\">Residency Sensor</span><nav>{nav}</nav>\
<span class=\"user\" id=\"user\">{user}</span>{logout}</header>\
<main><h1>{title}</h1>{body}</main>\
<footer>Read-only. Steering (enforcement, exceptions) is done with <code>collectorctl</code>. \
World map: @svg-maps/world by Victor Cazanave, CC BY 4.0.</footer></body></html>",
        title = esc(title),
    );
    Html(html).into_response()
}

/// A table: header cells, then rows of already-escaped cells.
pub fn table(id: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("<table id=\"{id}\"><thead><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{c}</td>");
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{display:flex;gap:1.5em;align-items:center;padding:.6em 1.2em;background:#1d2b45;color:#fff}
header a{color:#cfd8ea;text-decoration:none;margin-right:1em}header a.active{color:#fff;font-weight:600}
.brand{font-weight:700}.user{margin-left:auto;font-size:.9em}
form.reverify{display:inline;margin-left:.4em}
form.reverify button{font-size:.85em;cursor:pointer}
.logout button{background:none;border:1px solid #cfd8ea;color:#cfd8ea;border-radius:3px;cursor:pointer}
main{padding:1em 1.5em}h1{font-size:1.4em;margin:.2em 0 .6em}h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse;background:#fff;font-size:.88em;width:100%}
th,td{border-bottom:1px solid #e3e6eb;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.num,th.num{text-align:right}
.ok{color:#1a7f37;font-weight:600}.bad{color:#b42318;font-weight:600}.warn{color:#9a6700;font-weight:600}
.muted{color:#6b7480}code{font-size:.92em}
form.filters{display:flex;flex-wrap:wrap;gap:.5em;align-items:end;margin-bottom:1em}
form.filters label{display:flex;flex-direction:column;font-size:.8em;color:#4a5361}
form.filters input,form.filters select{font-size:1em;padding:.2em .3em;min-width:9em}
.charts{display:flex;flex-wrap:wrap;gap:1.5em;margin-bottom:1em}
.charts figure{margin:0;background:#fff;padding:.6em;border:1px solid #e3e6eb}
figcaption{font-size:.85em;color:#4a5361;margin-bottom:.3em}
svg text{font-size:11px;fill:#4a5361}.legend span{display:inline-block;margin-right:1em;font-size:.8em}
.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.3em;vertical-align:middle}
.total{font-size:1.05em;margin:.4em 0}.pager{margin:.8em 0}
.error{background:#fdecea;border:1px solid #f5c2bd;padding:.6em;margin-bottom:1em}
.login{max-width:34em}.login textarea{width:100%;height:6em}
footer{padding:1em 1.5em;font-size:.75em;color:#6b7480}
";

/// `/static/style.css`.
pub async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(esc("a\u{1b}[31mb"), "a\u{fffd}[31mb");
        assert_eq!(url_encode("a b&c=/é"), "a%20b%26c%3D%2F%C3%A9");
        assert_eq!(query(&[("host", "h 1"), ("class", "")]), "?host=h%201");
    }
}
