//! The report as one self-contained HTML page: an inline SVG chart of both rates, one point
//! per bucket, and the tables. No script, no stylesheet or font from elsewhere: it opens from
//! a CI artifact or a mail attachment as it is.

use super::{Report, Stats};

const W: f64 = 760.0;
const H: f64 = 280.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 48.0;

/// Text for HTML element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |x| format!("{:.1}%", x * 100.0))
}

pub fn render(r: &Report) -> String {
    let mut out = String::with_capacity(16 * 1024);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str(&format!(
        "<title>seb rollout report {} to {}</title>\n",
        esc(&r.since),
        esc(&r.until)
    ));
    out.push_str(
        "<style>body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}\
         td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}th:first-child,td:first-child{text-align:left}\
         .wb{stroke:#c0392b;fill:#c0392b}.fb{stroke:#2471a3;fill:#2471a3}.none{fill:#fff}</style>\n</head>\n<body>\n",
    );
    out.push_str(&format!(
        "<h1>Rollout report</h1>\n<p>{} to {}, one point per {} s. Would-block rate: changes enforcing \
         would have refused, of all changes. False-block rate: would-blocks an operator labelled \
         legitimate, of all would-blocks. A hollow point has no data.</p>\n",
        esc(&r.since),
        esc(&r.until),
        r.bucket_seconds
    ));
    chart(&mut out, r);
    out.push_str("<h2>Per bucket</h2>\n");
    let rows: Vec<(String, &Stats)> = r
        .by_bucket
        .iter()
        .map(|b| (b.start.clone(), &b.stats))
        .chain(std::iter::once(("total".to_string(), &r.total)))
        .collect();
    table(&mut out, "bucket", "buckets", &rows);
    for (title, id, map) in [
        ("Per target", "targets", &r.by_target),
        ("Per agent", "agents", &r.by_agent),
        ("Per policy", "policies", &r.by_policy),
    ] {
        out.push_str(&format!("<h2>{title}</h2>\n"));
        let rows: Vec<(String, &Stats)> = map.iter().map(|(k, v)| (k.clone(), v)).collect();
        table(&mut out, "name", id, &rows);
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn chart(out: &mut String, r: &Report) {
    let n = r.by_bucket.len();
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x = |i: usize| {
        LEFT + if n > 1 {
            plot_w * i as f64 / (n - 1) as f64
        } else {
            plot_w / 2.0
        }
    };
    let y = |rate: f64| TOP + (1.0 - rate.clamp(0.0, 1.0)) * plot_h;
    out.push_str(&format!(
        "<svg id=\"trend\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"would-block and false-block rates per bucket\">\n"
    ));
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        out.push_str(&format!(
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}%</text>\n",
            W - RIGHT,
            LEFT - 6.0,
            y(tick) + 4.0,
            (tick * 100.0) as u32,
            y = y(tick)
        ));
    }
    // Bucket labels, thinned so that they do not overlap.
    let every = n.div_ceil(8).max(1);
    for (i, b) in r
        .by_bucket
        .iter()
        .enumerate()
        .filter(|(i, _)| i % every == 0)
    {
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>\n",
            x(i),
            H - BOTTOM + 16.0,
            esc(b.start.get(..10).unwrap_or(&b.start))
        ));
    }
    for (class, name, rate) in [
        (
            "wb",
            "would-block rate",
            (|s: &Stats| s.would_block_rate) as fn(&Stats) -> Option<f64>,
        ),
        ("fb", "false-block rate", |s: &Stats| s.false_block_rate),
    ] {
        let points: Vec<String> = r
            .by_bucket
            .iter()
            .enumerate()
            .filter_map(|(i, b)| rate(&b.stats).map(|v| format!("{:.1},{:.1}", x(i), y(v))))
            .collect();
        out.push_str(&format!(
            "<g class=\"series {class}\" data-series=\"{name}\">\n<polyline fill=\"none\" stroke-width=\"2\" points=\"{}\"/>\n",
            points.join(" ")
        ));
        for (i, b) in r.by_bucket.iter().enumerate() {
            let v = rate(&b.stats);
            out.push_str(&format!(
                "<circle class=\"point{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" data-bucket=\"{}\" data-rate=\"{}\"><title>{}: {} {}</title></circle>\n",
                if v.is_none() { " none" } else { "" },
                x(i),
                y(v.unwrap_or(0.0)),
                esc(&b.start),
                v.map(|v| format!("{v:.6}")).unwrap_or_default(),
                esc(&b.start),
                name,
                pct(v)
            ));
        }
        out.push_str("</g>\n");
    }
    out.push_str(&format!(
        "<text class=\"wb\" x=\"{LEFT}\" y=\"{}\" font-size=\"12\" stroke=\"none\">&#9679; would-block rate</text>\
         <text class=\"fb\" x=\"{}\" y=\"{}\" font-size=\"12\" stroke=\"none\">&#9679; false-block rate</text>\n</svg>\n",
        H - 8.0,
        LEFT + 160.0,
        H - 8.0
    ));
}

fn table(out: &mut String, first: &str, id: &str, rows: &[(String, &Stats)]) {
    out.push_str(&format!(
        "<table id=\"{id}\">\n<tr><th>{first}</th><th>changes</th><th>would block</th><th>unasked</th>\
         <th>out of contract</th><th>policy</th><th>other</th><th>labelled legitimate</th>\
         <th>labelled harmful</th><th>would-block rate</th><th>false-block rate</th></tr>\n"
    ));
    for (name, s) in rows {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            esc(name),
            s.changes,
            s.would_block,
            s.causes.unasked,
            s.causes.out_of_contract,
            s.causes.policy,
            s.causes.other,
            s.labelled_legitimate,
            s.labelled_harmful,
            pct(s.would_block_rate),
            pct(s.false_block_rate)
        ));
    }
    out.push_str("</table>\n");
}
