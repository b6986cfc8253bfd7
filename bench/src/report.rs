//! The result table: one row per metric with both brokers' values, the
//! ratio tollgate/mosquitto and the target, as plain text or JSON. It must
//! never hide a failed measurement: a missing value prints its reason.

use serde_json::{json, Value};

/// One broker's figure for one metric.
#[derive(Clone, Debug)]
pub struct Cell {
    pub value: f64,
    /// Shown after the value, e.g. "LOSS 12".
    pub note: Option<String>,
}

/// A measured figure or why there is none.
pub type Measured = Result<Cell, String>;

/// Build an ok cell.
pub fn cell(value: f64) -> Measured {
    Ok(Cell { value, note: None })
}

/// Build an ok cell with a note.
pub fn cell_note(value: f64, note: impl Into<String>) -> Measured {
    Ok(Cell {
        value,
        note: Some(note.into()),
    })
}

/// What a row is judged against.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// ratio tollgate/mosquitto at least this.
    RatioAtLeast(f64),
    /// tollgate's value at most this.
    AtMost(f64),
    None,
}

/// One table row.
#[derive(Clone, Debug)]
pub struct Row {
    pub metric: String,
    pub unit: &'static str,
    pub decimals: usize,
    pub a: Measured,
    pub b: Measured,
    pub target: Target,
}

fn fmt_value(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    // Thousands separators for the integer part.
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i.to_string(), format!(".{f}")),
        None => (s.clone(), String::new()),
    };
    let neg = int.starts_with('-');
    let digits: Vec<char> = int.trim_start_matches('-').chars().collect();
    let mut out = String::new();
    for (i, c) in digits.iter().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(*c);
    }
    format!("{}{out}{frac}", if neg { "-" } else { "" })
}

fn fmt_cell(m: &Measured, decimals: usize) -> String {
    match m {
        Ok(c) => match &c.note {
            // Long notes (error texts) are listed under the table instead.
            Some(n) => {
                let short = n.split(", first:").next().unwrap_or(n);
                format!("{} ({short})", fmt_value(c.value, decimals))
            }
            None => fmt_value(c.value, decimals),
        },
        Err(_) => "n/a".to_string(),
    }
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        match (&self.a, &self.b) {
            (Ok(a), Ok(b)) if b.value > 0.0 => Some(a.value / b.value),
            _ => None,
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::RatioAtLeast(r) => {
                let verdict = match self.ratio() {
                    Some(x) if x >= r && self.clean() => "met",
                    Some(_) => "MISSED",
                    None => "-",
                };
                format!(">= {r:.1}x {verdict}")
            }
            Target::AtMost(v) => {
                let verdict = match &self.a {
                    Ok(c) if c.value <= v => "met",
                    Ok(_) => "MISSED",
                    Err(_) => "-",
                };
                format!("<= {} {} {verdict}", fmt_value(v, 0), self.unit)
            }
            Target::None => String::new(),
        }
    }

    /// No cell carries a loss/failure note.
    fn clean(&self) -> bool {
        [&self.a, &self.b]
            .iter()
            .all(|m| matches!(m, Ok(c) if c.note.as_deref().map_or(true, |n| !n.contains("LOSS"))))
    }
}

/// Render the plain-text table.
pub fn table(rows: &[Row], a_name: &str, b_name: &str) -> String {
    let header = [
        "metric".to_string(),
        a_name.to_string(),
        b_name.to_string(),
        "ratio".to_string(),
        "target".to_string(),
    ];
    let body: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                if r.unit.is_empty() {
                    r.metric.clone()
                } else {
                    format!("{} ({})", r.metric, r.unit)
                },
                fmt_cell(&r.a, r.decimals),
                fmt_cell(&r.b, r.decimals),
                r.ratio().map(|x| format!("{x:.2}x")).unwrap_or("-".into()),
                r.target_text(),
            ]
        })
        .collect();
    let mut widths = [0usize; 5];
    for line in std::iter::once(&header).chain(body.iter()) {
        for (w, c) in widths.iter_mut().zip(line.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt_line = |line: &[String; 5]| {
        let mut s = String::new();
        for (i, (c, w)) in line.iter().zip(widths.iter()).enumerate() {
            if i == 0 {
                s.push_str(&format!("{c:<w$}"));
            } else {
                s.push_str(&format!(" | {c:>w$}"));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = fmt_line(&header);
    out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 3 * 4));
    out.push('\n');
    for line in &body {
        out.push_str(&fmt_line(line));
    }
    // One line per distinct reason, naming the rows it affected.
    let mut errors: Vec<(String, Vec<String>)> = Vec::new();
    for r in rows {
        for (name, m) in [(a_name, &r.a), (b_name, &r.b)] {
            let reason = match m {
                Err(e) => format!("n/a {name}: {e}"),
                Ok(Cell { note: Some(n), .. }) if n.contains(", first:") => format!("{name}: {n}"),
                Ok(_) => continue,
            };
            let metric = r.metric.trim().to_string();
            match errors.iter_mut().find(|(e, _)| *e == reason) {
                Some((_, metrics)) => metrics.push(metric),
                None => errors.push((reason, vec![metric])),
            }
        }
    }
    if !errors.is_empty() {
        out.push_str("\nNot measured / failures:\n");
        for (reason, metrics) in errors {
            out.push_str(&format!("  {reason}\n    rows: {}\n", metrics.join("; ")));
        }
    }
    out
}

fn cell_json(m: &Measured) -> Value {
    match m {
        Ok(c) => json!({ "value": c.value, "note": c.note }),
        Err(e) => json!({ "error": e }),
    }
}

/// Render the rows as JSON.
pub fn json(rows: &[Row], a_name: &str, b_name: &str, meta: Value) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "metric": r.metric,
                "unit": r.unit,
                "decimals": r.decimals,
                a_name: cell_json(&r.a),
                b_name: cell_json(&r.b),
                "ratio": r.ratio(),
                "target": r.target_text(),
            })
        })
        .collect();
    json!({ "meta": meta, "columns": [a_name, b_name], "rows": rows })
}

/// Render `--json` output as Markdown for the README: the run's facts, then one table.
pub fn markdown(result: &Value) -> anyhow::Result<String> {
    let meta = &result["meta"];
    let columns: Vec<&str> = result["columns"]
        .as_array()
        .map(|c| c.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let [a_name, b_name] = columns[..] else {
        anyhow::bail!("the JSON has no two \"columns\"");
    };
    let text = |v: &Value| v.as_str().unwrap_or("unknown").to_string();
    let mut out = String::new();
    out.push_str(&format!("`{}`\n\n", text(&meta["command"])));
    out.push_str(&format!(
        "Commit {}, {}; {}; {}.\n",
        text(&meta["commit"]),
        text(&meta["date"]),
        text(&meta["machine"]),
        text(&meta["setup"]),
    ));
    if let Some(v) = meta["versions"].as_object() {
        let versions: Vec<String> = v.iter().map(|(k, v)| format!("{k}: {}", text(v))).collect();
        out.push_str(&format!("Versions: {}.\n", versions.join("; ")));
    }
    out.push('\n');
    out.push_str(&format!(
        "| metric | {a_name} | {b_name} | ratio | target |\n|---|---:|---:|---:|---|\n"
    ));
    let rows = result["rows"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for r in rows {
        let decimals = r["decimals"].as_u64().unwrap_or(1) as usize;
        let unit = text(&r["unit"]);
        let metric = text(&r["metric"]);
        // Sub-rows keep their indent visible in Markdown.
        let metric = match metric.strip_prefix("  ") {
            Some(sub) => format!("&nbsp;&nbsp;{sub}"),
            None => metric,
        };
        let cell = |c: &Value| -> String {
            if let Some(e) = c["error"].as_str() {
                let _ = e;
                return "n/a".into();
            }
            let value = c["value"]
                .as_f64()
                .map_or("n/a".into(), |v| fmt_value(v, decimals));
            match c["note"].as_str() {
                Some(n) => format!("{value} ({})", n.split(", first:").next().unwrap_or(n)),
                None => value,
            }
        };
        let ratio = r["ratio"]
            .as_f64()
            .map_or("-".into(), |x| format!("{x:.2}x"));
        let label = if unit.is_empty() {
            metric
        } else {
            format!("{metric} ({unit})")
        };
        out.push_str(&format!(
            "| {label} | {} | {} | {ratio} | {} |\n",
            cell(&r[a_name]),
            cell(&r[b_name]),
            text(&r["target"]).replace("unknown", ""),
        ));
    }
    if let Some(notes) = meta["notes"].as_array().filter(|n| !n.is_empty()) {
        out.push('\n');
        for n in notes {
            out.push_str(&format!("- {}\n", text(n)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(a: Measured, b: Measured, target: Target) -> Row {
        Row {
            metric: "m".into(),
            unit: "msg/s",
            decimals: 0,
            a,
            b,
            target,
        }
    }

    #[test]
    fn values_get_thousands_separators() {
        assert_eq!(fmt_value(1234567.0, 0), "1,234,567");
        assert_eq!(fmt_value(999.0, 0), "999");
        assert_eq!(fmt_value(1234.5, 1), "1,234.5");
    }

    #[test]
    fn ratio_target_is_missed_when_a_column_lost_messages() {
        let clean = row(cell(300.0), cell(100.0), Target::RatioAtLeast(2.0));
        assert!(clean.target_text().ends_with("met"));
        let lossy = row(
            cell_note(300.0, "LOSS 5"),
            cell(100.0),
            Target::RatioAtLeast(2.0),
        );
        assert!(lossy.target_text().ends_with("MISSED"));
    }

    #[test]
    fn markdown_renders_the_json_rows() {
        let rows = vec![
            row(cell(1234.0), cell(617.0), Target::RatioAtLeast(2.0)),
            row(Err("did not start".into()), cell(1.0), Target::None),
        ];
        let meta = json!({ "command": "cargo run", "commit": "abc1234" });
        let md = markdown(&json(&rows, "tollgate", "mosquitto", meta)).unwrap();
        assert!(
            md.contains("| m (msg/s) | 1,234 | 617 | 2.00x | >= 2.0x met |"),
            "{md}"
        );
        assert!(md.contains("| m (msg/s) | n/a | 1 | - |  |"), "{md}");
        assert!(md.contains("Commit abc1234"), "{md}");
    }

    #[test]
    fn missing_figures_are_listed_with_their_reason() {
        let rows = vec![row(Err("did not start".into()), cell(1.0), Target::None)];
        let t = table(&rows, "tollgate", "mosquitto");
        assert!(t.contains("n/a tollgate: did not start"), "{t}");
    }
}
