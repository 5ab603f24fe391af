//! The status page the master serves at `/` and `/ui`: server-rendered HTML with its
//! CSS and a few lines of plain JavaScript inline (no external assets), which fetch
//! `/ui/fragment` every 2 s and put it in place. Rendering is a pure function of a
//! `View`, so it is tested without a server. The page is read-only: it has no forms and
//! changes nothing. Every string that came from a node (ids, addresses, versions) or
//! from an event goes through `escape`.

use std::fmt::Write;

use super::events::Event;
use super::Snapshot;
use crate::proto::NodeInfo;

/// Everything the page shows.
pub struct View<'a> {
    pub snapshot: &'a Snapshot,
    pub events: &'a [Event],
    pub repairs: Repairs,
    pub moves: Moves,
    pub replication: usize,
    /// The S3 buckets and their usage (name, keys, bytes), the first `BUCKETS_SHOWN` by
    /// name. `None`: no section.
    pub buckets: Option<Vec<(String, u64, u64)>>,
}

/// Buckets the page lists at most.
pub const BUCKETS_SHOWN: usize = 100;

/// Copies moved between nodes, beside the drains the snapshot's counts tell.
#[derive(Debug, Clone, Copy, Default)]
pub struct Moves {
    /// Copies drains, the rebalancer and zone spreading moved since the master started.
    pub copies_moved: u64,
    /// Whether the rebalancer is moving copies now (usage outside the band).
    pub rebalancing: bool,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Repairs {
    pub queued: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The whole page.
pub fn page(view: &View) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>AetherStore status</title>
<style>{STYLE}</style>
</head>
<body>
<header><h1>AetherStore</h1><span id="conn" class="conn"></span></header>
<main id="status">{}</main>
<script>{SCRIPT}</script>
</body>
</html>
"#,
        fragment(view)
    )
}

/// What the refresh replaces: everything below the title.
pub fn fragment(view: &View) -> String {
    let snapshot = view.snapshot;
    let counts = &snapshot.counts;
    // A removed node is one whose address another took over: gone, not unwell.
    let members: Vec<&NodeInfo> = snapshot.nodes.iter().filter(|n| n.state != "removed").collect();
    let alive = members.iter().filter(|n| n.state == "alive").count();
    let (tone, verdict, why) = if alive < view.replication {
        ("bad", "Unavailable", format!("{alive} datanode(s) alive, {} needed for new uploads", view.replication))
    } else if counts.under_replicated > 0 || alive < members.len() {
        let mut why = Vec::new();
        if counts.under_replicated > 0 {
            why.push(format!("{} object(s) under-replicated", counts.under_replicated));
        }
        let unwell: Vec<String> =
            members.iter().filter(|n| n.state != "alive").map(|n| format!("{} {}", n.id, n.state)).collect();
        match unwell.len() {
            0 => {}
            1..=3 => why.push(unwell.join(", ")),
            n => why.push(format!("{}, and {} more not alive", unwell[..2].join(", "), n - 2)),
        }
        ("warn", "Degraded", why.join(", "))
    } else {
        ("good", "Healthy", format!("all {alive} datanode(s) alive, every object fully replicated"))
    };

    let mut html = String::new();
    let _ = write!(
        html,
        r#"<section class="verdict {tone}"><strong>{verdict}</strong><span>{}</span></section>"#,
        escape(&why)
    );
    html.push_str(r#"<section class="tiles">"#);
    for (label, value, tone) in [
        ("nodes alive", format!("{alive} / {}", members.len()), if alive == members.len() { "" } else { "warn" }),
        ("objects", counts.objects.to_string(), ""),
        ("stored", bytes(counts.object_bytes), ""),
        (
            "under-replicated",
            counts.under_replicated.to_string(),
            if counts.under_replicated > 0 { "warn" } else { "" },
        ),
        ("repairs running", (view.repairs.running + view.repairs.queued).to_string(), ""),
        ("repaired", view.repairs.done.to_string(), ""),
    ] {
        let _ = write!(html, r#"<div class="tile {tone}"><b>{}</b><small>{label}</small></div>"#, escape(&value));
    }
    html.push_str("</section>");
    if view.repairs.running + view.repairs.queued + view.repairs.failed > 0 || counts.under_replicated > 0 {
        let _ = write!(
            html,
            r#"<p class="repair">Repair: {} copying, {} queued, {} done, {} failed; {} pending delete(s).</p>"#,
            view.repairs.running, view.repairs.queued, view.repairs.done, view.repairs.failed, counts.pending_deletes
        );
    }

    if counts.nodes_draining + counts.nodes_drained > 0 || view.moves.rebalancing {
        let mut said = Vec::new();
        if counts.nodes_draining > 0 {
            said.push(format!(
                "{} node(s) draining, {} cop{} left to move",
                counts.nodes_draining,
                counts.copies_to_move,
                if counts.copies_to_move == 1 { "y" } else { "ies" }
            ));
        }
        if counts.nodes_drained > 0 {
            said.push(format!("{} node(s) drained, waiting for `aether node remove`", counts.nodes_drained));
        }
        if view.moves.rebalancing {
            said.push("rebalancing: copies move from the fullest node to the emptiest".to_string());
        }
        let _ = write!(
            html,
            r#"<p class="moves">Moves: {}; {} cop{} moved since the master started.</p>"#,
            escape(&said.join("; ")),
            view.moves.copies_moved,
            if view.moves.copies_moved == 1 { "y" } else { "ies" }
        );
    }

    html.push_str(r#"<h2>Datanodes</h2><section class="nodes">"#);
    if snapshot.nodes.is_empty() {
        html.push_str(r#"<p class="empty">No datanode has registered yet.</p>"#);
    }
    for node in &snapshot.nodes {
        let id = escape(&node.id);
        let state = escape(&node.state);
        let capacity = match (node.capacity_bytes, node.free_bytes) {
            (Some(total), Some(free)) if total > 0 => {
                let used = total.saturating_sub(free);
                let percent = used as f64 * 100.0 / total as f64;
                let tone = if percent >= 90.0 {
                    "bad"
                } else if percent >= 75.0 {
                    "warn"
                } else {
                    ""
                };
                format!(
                    r#"<div class="bar {tone}" title="{percent:.0}% used"><i style="width:{percent:.1}%"></i></div><small>{} used of {} ({percent:.0}%), {} free</small>"#,
                    bytes(used),
                    bytes(total),
                    bytes(free)
                )
            }
            _ => r#"<div class="bar"></div><small>capacity not yet reported</small>"#.to_string(),
        };
        let objects = node.object_count.map_or("?".to_string(), |n| n.to_string());
        // What a silent node last said may no longer be true.
        let capacity =
            if node.state == "alive" { capacity } else { capacity.replace("<small>", "<small>last reported: ") };
        let _ = write!(
            html,
            r#"<article class="node {state}" data-node="{id}" data-state="{state}"><div class="head"><span class="id">{id}</span><span class="state {state}">{state}</span></div><div class="addr">{}</div>{capacity}<dl><dt>objects</dt><dd>{objects}</dd><dt>replicas</dt><dd>{}</dd><dt>heartbeat</dt><dd>{}</dd><dt>version</dt><dd>{}</dd><dt>zone</dt><dd>{}</dd><dt>drain</dt><dd>{}</dd></dl></article>"#,
            escape(&node.address),
            node.replicas,
            escape(&ago(node.last_seen_secs_ago)),
            escape(node.version.as_deref().unwrap_or("unknown")),
            escape(node.zone.as_deref().filter(|z| !z.is_empty()).unwrap_or("none")),
            // A draining node's replica count is the copies it still has to move away.
            escape(node.drain.as_deref().unwrap_or("no")),
        );
    }
    html.push_str("</section>");

    if let Some(buckets) = &view.buckets {
        html.push_str(
            r#"<h2>Buckets</h2><table class="buckets"><tr><th>bucket</th><th>objects</th><th>size</th></tr>"#,
        );
        if buckets.is_empty() {
            html.push_str(r#"<tr><td colspan="3" class="empty">No S3 bucket yet.</td></tr>"#);
        }
        for (name, objects, size) in buckets {
            // The exact byte count on hover: a bucket's usage is a counter, not an estimate.
            let _ = write!(
                html,
                r#"<tr><td>{}</td><td>{objects}</td><td title="{size} bytes">{}</td></tr>"#,
                escape(name),
                bytes(*size)
            );
        }
        html.push_str("</table>");
        if buckets.len() >= BUCKETS_SHOWN {
            let _ = write!(html, r#"<p class="empty">The first {BUCKETS_SHOWN} buckets by name.</p>"#);
        }
    }

    html.push_str(r#"<h2>Recent events</h2><ol class="events">"#);
    if view.events.is_empty() {
        html.push_str(r#"<li class="empty">Nothing has happened since the master started.</li>"#);
    }
    for event in view.events {
        let _ = write!(
            html,
            r#"<li class="{}"><time>{}</time><b>{}</b> {}</li>"#,
            event.kind.tone(),
            clock(event.at_ms),
            event.kind.as_str(),
            escape(&event.message)
        );
    }
    let _ = write!(
        html,
        r#"</ol><footer>master {} · replication {} · as of {} UTC</footer>"#,
        escape(crate::VERSION),
        view.replication,
        clock(snapshot.taken_ms)
    );
    html
}

/// `1.5 GiB`-style sizes.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn ago(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1} s ago")
    } else if secs < 3600.0 {
        format!("{:.0} min ago", secs / 60.0)
    } else {
        format!("{:.1} h ago", secs / 3600.0)
    }
}

/// `HH:MM:SS` (UTC) of a Unix time in milliseconds.
fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

const STYLE: &str = "
*{box-sizing:border-box}
body{margin:0;font:15px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;background:#f3f4f6;color:#111827}
header{display:flex;align-items:baseline;gap:.75rem;padding:.75rem 1rem;background:#111827;color:#fff}
h1{font-size:1.2rem;margin:0}
h2{font-size:1rem;margin:1.25rem 0 .5rem}
main{padding:.75rem 1rem 2rem;max-width:1200px;margin:0 auto}
.conn{color:#fca5a5;font-size:.85rem}
.verdict{display:flex;flex-wrap:wrap;align-items:baseline;gap:.5rem;padding:.75rem 1rem;border-radius:.5rem;color:#fff}
.verdict strong{font-size:1.3rem}
.verdict.good{background:#15803d}.verdict.warn{background:#b45309}.verdict.bad{background:#b91c1c}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(130px,1fr));gap:.5rem;margin-top:.75rem}
.tile{background:#fff;border-radius:.5rem;padding:.5rem .75rem;border-left:4px solid #9ca3af}
.tile b{display:block;font-size:1.25rem}.tile small{color:#4b5563}
.tile.warn{border-left-color:#d97706}
.repair{background:#fff7ed;border-radius:.5rem;padding:.5rem .75rem}
.moves{background:#eff6ff;border-radius:.5rem;padding:.5rem .75rem}
.nodes{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:.75rem}
.node{background:#fff;border-radius:.5rem;padding:.75rem;border-top:4px solid #6b7280}
.node.alive{border-top-color:#15803d}.node.suspect,.node.read-only{border-top-color:#d97706}
.node.dead,.node.failed{border-top-color:#b91c1c;background:#fef2f2}.node.removed{opacity:.6}
.head{display:flex;justify-content:space-between;gap:.5rem;align-items:center}
.id{font-weight:600;overflow-wrap:anywhere}
.state{font-size:.8rem;font-weight:700;text-transform:uppercase;padding:.1rem .5rem;border-radius:999px;color:#fff;background:#6b7280}
.state.alive{background:#15803d}.state.suspect,.state.read-only{background:#d97706}
.state.dead,.state.failed{background:#b91c1c}
.addr{color:#4b5563;font-size:.85rem;overflow-wrap:anywhere;margin:.25rem 0 .5rem}
.bar{height:.6rem;background:#e5e7eb;border-radius:999px;overflow:hidden}
.bar i{display:block;height:100%;background:#2563eb}
.bar.warn i{background:#d97706}.bar.bad i{background:#b91c1c}
.node:not(.alive) .bar i{background:#9ca3af}
.node small{color:#4b5563}
dl{display:grid;grid-template-columns:auto 1fr;gap:.1rem .75rem;margin:.5rem 0 0;font-size:.9rem}
dt{color:#6b7280}dd{margin:0;overflow-wrap:anywhere}
.events{list-style:none;padding:0;margin:0;background:#fff;border-radius:.5rem}
.events li{padding:.4rem .75rem;border-bottom:1px solid #e5e7eb;border-left:4px solid #9ca3af;overflow-wrap:anywhere}
.events li.good{border-left-color:#15803d}.events li.warn{border-left-color:#d97706}.events li.bad{border-left-color:#b91c1c}
.events time{color:#6b7280;margin-right:.5rem;font-variant-numeric:tabular-nums}
.empty{color:#6b7280}
table{width:100%;background:#fff;border-radius:.5rem;border-collapse:collapse}
td,th{text-align:left;padding:.4rem .75rem;border-bottom:1px solid #e5e7eb}
footer{margin-top:1rem;color:#6b7280;font-size:.8rem}
";

/// Refreshes the page's content every 2 s; says so when the master does not answer.
const SCRIPT: &str = "
(function () {
  var main = document.getElementById('status'), conn = document.getElementById('conn');
  function refresh() {
    fetch('/ui/fragment', {cache: 'no-store'})
      .then(function (r) { if (!r.ok) { throw new Error('HTTP ' + r.status); } return r.text(); })
      .then(function (html) {
        main.innerHTML = html;
        conn.textContent = '';
        document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
      })
      .catch(function () { conn.textContent = 'master not answering, retrying'; });
  }
  setInterval(refresh, 2000);
})();
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::db::Counts;
    use crate::master::events::EventKind;
    use crate::proto::NodeInfo;

    fn node(id: &str, state: &str, version: &str) -> NodeInfo {
        NodeInfo {
            id: id.to_string(),
            address: format!("http://{id}:42101"),
            state: state.to_string(),
            registered_at: String::new(),
            last_seen: String::new(),
            last_seen_secs_ago: 1.25,
            replicas: 3,
            capacity_bytes: Some(100 << 30),
            free_bytes: Some(40 << 30),
            object_count: Some(3),
            version: Some(version.to_string()),
            zone: None,
            drain: None,
        }
    }

    #[test]
    fn everything_from_a_node_is_escaped() {
        let snapshot = Snapshot {
            taken_ms: 0,
            counts: Counts::default(),
            nodes: vec![node("dn-<script>", "alive", "<img src=x onerror=alert(1)>\"'")],
            buckets: Vec::new(),
        };
        let events = [Event { at_ms: 0, kind: EventKind::NodeDead, message: "node <b>x</b> died".into() }];
        let view = View {
            snapshot: &snapshot,
            events: &events,
            repairs: Repairs::default(),
            moves: Moves::default(),
            replication: 1,
            buckets: None,
        };
        let html = page(&view);
        assert!(!html.contains("<script>alert") && !html.contains("dn-<script>"), "{html}");
        assert!(!html.contains("<img") && !html.contains("<b>x</b>"), "{html}");
        assert!(html.contains("dn-&lt;script&gt;") && html.contains("&lt;img src=x onerror=alert(1)&gt;&quot;&#39;"));
        assert_eq!(html.matches("<script>").count(), 1, "only the page's own script");
    }

    #[test]
    fn drains_rebalance_and_buckets_show_and_bucket_names_are_escaped() {
        let counts = Counts { nodes_draining: 1, copies_to_move: 12, nodes_drained: 2, ..Counts::default() };
        let buckets = vec![("photos".to_string(), 3, 3 << 20), ("<i>x</i>&".to_string(), 0, 0)];
        let snapshot = Snapshot { taken_ms: 0, counts, nodes: vec![node("a", "alive", "v")], buckets: buckets.clone() };
        let moves = Moves { copies_moved: 7, rebalancing: true };
        let view = View {
            snapshot: &snapshot,
            events: &[],
            repairs: Repairs::default(),
            moves,
            replication: 1,
            buckets: Some(buckets),
        };
        let html = fragment(&view);
        for said in [
            "1 node(s) draining, 12 copies left to move",
            "2 node(s) drained, waiting for `aether node remove`",
            "rebalancing: copies move",
            "7 copies moved since the master started",
            r#"<tr><td>photos</td><td>3</td><td title="3145728 bytes">3.0 MiB</td></tr>"#,
            "<td>&lt;i&gt;x&lt;/i&gt;&amp;</td>",
        ] {
            assert!(html.contains(said), "{said:?} missing: {html}");
        }
        assert!(!html.contains("<i>x</i>"), "{html}");

        // Nothing moving, no bucket: no moves line, and the bucket table says so.
        let quiet = Snapshot { taken_ms: 0, counts: Counts::default(), nodes: Vec::new(), buckets: Vec::new() };
        let view = View {
            snapshot: &quiet,
            events: &[],
            repairs: Repairs::default(),
            moves: Moves::default(),
            replication: 1,
            buckets: Some(Vec::new()),
        };
        let html = fragment(&view);
        assert!(!html.contains(r#"class="moves""#) && html.contains("No S3 bucket yet."), "{html}");
    }

    #[test]
    fn the_verdict_follows_the_nodes_and_the_copies() {
        let check = |nodes: Vec<NodeInfo>, under: u64, want: &str| {
            let snapshot = Snapshot {
                taken_ms: 0,
                counts: Counts { under_replicated: under, ..Counts::default() },
                nodes,
                buckets: Vec::new(),
            };
            let view = View {
                snapshot: &snapshot,
                events: &[],
                repairs: Repairs::default(),
                moves: Moves::default(),
                replication: 2,
                buckets: None,
            };
            assert!(fragment(&view).contains(&format!("<strong>{want}</strong>")), "{want}");
        };
        check(vec![node("a", "alive", "v"), node("b", "alive", "v")], 0, "Healthy");
        check(vec![node("a", "alive", "v"), node("b", "alive", "v")], 3, "Degraded");
        check(vec![node("a", "alive", "v"), node("b", "alive", "v"), node("c", "dead", "v")], 0, "Degraded");
        let many: Vec<NodeInfo> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|id| node(id, if *id < "c" { "alive" } else { "dead" }, "v"))
            .collect();
        let snapshot = Snapshot { taken_ms: 0, counts: Counts::default(), nodes: many, buckets: Vec::new() };
        let view = View {
            snapshot: &snapshot,
            events: &[],
            repairs: Repairs::default(),
            moves: Moves::default(),
            replication: 2,
            buckets: None,
        };
        assert!(fragment(&view).contains("c dead, d dead, and 2 more not alive"), "{}", fragment(&view));
        check(vec![node("a", "alive", "v"), node("b", "dead", "v")], 0, "Unavailable");
        assert_eq!(
            (bytes(512), bytes(3 << 30), clock(3_723_000)),
            ("512 B".into(), "3.0 GiB".into(), "01:02:03".into())
        );
    }
}
